// PostgreSQL -> Pub/Sub relay throughput next to the raw @google-cloud/pubsub client (the
// ceiling), same data, same client settings, same fake server, same run.
//
//   pnpm --filter @outbox/bench bench:postgres-pubsub      (servers: scripts/services.sh start postgres pubsub)
//   BENCH_ROWS=10000 BENCH_REPS=3 BENCH_BATCHES=100,1000 BENCH_KEYS=1000 \
//     pnpm --filter @outbox/bench bench:postgres-pubsub
//
// It lives in @outbox/bench because it needs two adapters (no adapter depends on another); the figures
// are in packages/publisher-pubsub/README.md, Bench.
//
// Relay: rows pre-filled (1 KiB random payloads, BENCH_KEYS keys round-robin), then timed
// `relay.drain()` (claim -> publish -> ack, one batch in flight). Raw: the same payloads, keys
// (ordering keys) and outbox attributes through `topic.publishMessage` on a topic with the
// publisher's settings (message ordering, batching), one batch awaited after the other.
// "Publisher alone": `publish()` of the same entries, no store.
import { randomBytes } from "node:crypto";
import { PubSub } from "@google-cloud/pubsub";
import { OutboxRelay } from "@outbox/core";
import { createPubSubPublisher, defaultBatching } from "@outbox/publisher-pubsub";
import { createPostgresStore, migrate } from "@outbox/store-postgres";
import { machineLine, median } from "@outbox/test-support/bench";
import pg from "pg";

const ROWS = Number(process.env.BENCH_ROWS ?? 10_000);
const REPS = Number(process.env.BENCH_REPS ?? 3);
const KEYS = Number(process.env.BENCH_KEYS ?? 1_000);
const BATCHES = (process.env.BENCH_BATCHES ?? "100,1000").split(",").map(Number);
const PAYLOAD = 1_024;
const pgUrl = process.env.OUTBOX_PG_URL ?? "postgres://postgres:postgres@127.0.0.1:5432/outbox_test";
const endpoint = process.env.OUTBOX_PUBSUB_EMULATOR_HOST ?? "127.0.0.1:8085";

const pubsub = new PubSub({
  projectId: "outbox-bench",
  apiEndpoint: endpoint,
  emulatorMode: true,
  universeDomain: "googleapis.com",
});
const pool = new pg.Pool({ connectionString: pgUrl, max: 4 });
const id = () => globalThis.crypto.randomUUID().slice(0, 8);
const payloads = Array.from({ length: 64 }, () => randomBytes(PAYLOAD));

/** A fresh topic; no subscription, so the fake keeps nothing (what is measured is publishing). */
async function newTopic(): Promise<string> {
  const name = `outbox-bench-${id()}`;
  await pubsub.createTopic(name);
  return name;
}

async function raw(batch: number): Promise<number> {
  const name = await newTopic();
  const topic = pubsub.topic(name, { messageOrdering: true, batching: defaultBatching, gaxOpts: { timeout: 20_000 } });
  try {
    await topic.publishMessage({ data: Buffer.from("warm-up"), attributes: { "outbox-id": "0" } });
    const started = performance.now();
    for (let start = 0; start < ROWS; start += batch) {
      const sends: Array<Promise<string>> = [];
      for (let n = start; n < Math.min(ROWS, start + batch); n++) {
        sends.push(
          topic.publishMessage({
            data: payloads[n % payloads.length] as Buffer,
            attributes: { "outbox-id": String(n), "outbox-idempotency-key": String(n) },
            orderingKey: `key-${n % KEYS}`,
          }),
        );
      }
      await Promise.all(sends);
    }
    return ROWS / ((performance.now() - started) / 1_000);
  } finally {
    await topic.delete().catch(() => undefined);
  }
}

async function publisherOnly(batch: number): Promise<number> {
  const name = await newTopic();
  const publisher = createPubSubPublisher({ pubsub });
  try {
    const now = new Date();
    const entry = (n: number) => ({
      id: String(n + 1),
      topic: name,
      key: `key-${n % KEYS}`,
      payload: payloads[n % payloads.length] as Uint8Array,
      headers: {},
      idempotencyKey: String(n + 1),
      createdAt: now,
      availableAt: now,
      attempts: 1,
      lastError: null,
    });
    await publisher.publish([{ ...entry(0), id: "warm-up", key: null }]);
    const entries = Array.from({ length: ROWS }, (_, n) => entry(n));
    const started = performance.now();
    for (let start = 0; start < ROWS; start += batch) {
      const outcomes = await publisher.publish(entries.slice(start, start + batch));
      if (outcomes.some((outcome) => outcome.status !== "published")) throw new Error("publish failed");
    }
    return ROWS / ((performance.now() - started) / 1_000);
  } finally {
    await publisher.close();
    await pubsub
      .topic(name)
      .delete()
      .catch(() => undefined);
  }
}

async function relay(batch: number): Promise<number> {
  const name = await newTopic();
  const table = `outbox_bench_${id()}`;
  await migrate(pool, { table });
  const store = createPostgresStore({ pool, table, listen: false, notifyChannel: false });
  const publisher = createPubSubPublisher({ pubsub });
  try {
    for (let start = 0; start < ROWS; start += 1_000) {
      const messages = [];
      for (let n = start; n < Math.min(ROWS, start + 1_000); n++) {
        messages.push({ topic: name, key: `key-${n % KEYS}`, payload: payloads[n % payloads.length] as Uint8Array });
      }
      await store.enqueue(pool, messages);
    }
    await pool.query(`VACUUM ANALYZE "${table}"`);
    await publisher.publish([]);
    const outbox = new OutboxRelay({ store, publisher, batchSize: batch, pollMs: 50 });
    const started = performance.now();
    const drained = await outbox.drain();
    const seconds = (performance.now() - started) / 1_000;
    if (drained !== ROWS) throw new Error(`drained ${drained} of ${ROWS}`);
    const stats = await store.stats();
    if (stats.pending !== 0 || stats.dead !== 0) throw new Error(`left ${JSON.stringify(stats)}`);
    return ROWS / seconds;
  } finally {
    await publisher.close();
    await store.close();
    await pool.query(`DROP TABLE IF EXISTS "${table}", "${table}_fence"`);
    await pubsub
      .topic(name)
      .delete()
      .catch(() => undefined);
  }
}

const fmt = (value: number) => Math.round(value).toLocaleString("en-US");

const [{ server_version: pgVersion, fsync }] = (
  await pool.query("SELECT current_setting('server_version') AS server_version, current_setting('fsync') AS fsync")
).rows as [{ server_version: string; fsync: string }];
console.log(
  `# PostgreSQL -> Pub/Sub relay vs raw @google-cloud/pubsub: ${ROWS.toLocaleString("en-US")} rows x 1 KiB, ${KEYS} ordering keys, median of ${REPS}\n` +
    `${machineLine()}, ` +
    `@google-cloud/pubsub 6.3.0, pstest fake server v2.9.0 (loopback), PostgreSQL ${pgVersion} fsync=${fsync}\n`,
);
const rows: string[] = [];
for (const batch of BATCHES) {
  const relayRuns: number[] = [];
  const rawRuns: number[] = [];
  const publisherRuns: number[] = [];
  for (let rep = 0; rep < REPS; rep++) {
    rawRuns.push(await raw(batch));
    publisherRuns.push(await publisherOnly(batch));
    relayRuns.push(await relay(batch));
  }
  const [r, k, p] = [median(relayRuns), median(rawRuns), median(publisherRuns)];
  const pct = (value: number) => `${((value / k) * 100).toFixed(0)}%`;
  rows.push(`| ${batch} | ${fmt(r)} | ${fmt(k)} | **${pct(r)}** | ${fmt(p)} (${pct(p)}) |`);
  console.error(
    `batch ${batch}: relay ${relayRuns.map(fmt).join(", ")} / raw ${rawRuns.map(fmt).join(", ")} / publisher ${publisherRuns.map(fmt).join(", ")} msg/s`,
  );
}
console.log(
  "| batch | relay PG -> Pub/Sub (msg/s) | raw publishMessage (msg/s) | relay / raw | publisher alone, no store (msg/s, / raw) |",
);
console.log("|---:|---:|---:|---:|---:|");
for (const row of rows) console.log(row);
await pool.end();
await pubsub.close();
