// PostgreSQL -> Kafka relay throughput next to the raw kafkajs producer (the ceiling), same
// data, same producer settings, same machine, same run.
//
//   pnpm --filter @outbox/bench bench:postgres-kafka       (servers: scripts/services.sh start postgres kafka)
//   BENCH_ROWS=20000 BENCH_REPS=3 BENCH_BATCHES=32,256,1024 BENCH_KEYS=4096 \
//     pnpm --filter @outbox/bench bench:postgres-kafka
//
// It lives in @outbox/bench because it needs two adapters (no adapter depends on another); the figures
// are in packages/publisher-kafka/README.md, Bench.
//
// Relay: rows pre-filled (1 KiB random payloads, BENCH_KEYS distinct keys round-robin), then
// the relay's background loop, timed until every row is published (default maxInFlightBatches:
// the next batch is claimed while the current one publishes and acks).
// Raw: the same 1 KiB payloads, keys and outbox headers, sent with `producer.sendBatch` in
// batches of the same size, one awaited after the other, from a producer configured like the
// publisher's own (idempotent, acks -1, one in-flight request, same partitioner).
import { randomBytes } from "node:crypto";
import { cpus } from "node:os";
import { OutboxRelay } from "@outbox/core";
import { createKafkaPublisher, createOutboxPartitioner, defaultProducerConfig } from "@outbox/publisher-kafka";
import { createPostgresStore, migrate } from "@outbox/store-postgres";
import { machineLine, median } from "@outbox/test-support/bench";
import { type CpuUse, measureCpu } from "@outbox/test-support/cpu";
import { Kafka, logLevel } from "kafkajs";
import pg from "pg";

const ROWS = Number(process.env.BENCH_ROWS ?? 20_000);
const REPS = Number(process.env.BENCH_REPS ?? 3);
const KEYS = Number(process.env.BENCH_KEYS ?? 4_096);
const BATCHES = (process.env.BENCH_BATCHES ?? "32,256,1024").split(",").map(Number);
const PAYLOAD = 1_024;
const pgUrl = process.env.OUTBOX_PG_URL ?? "postgres://postgres:postgres@127.0.0.1:5432/outbox_test";
const brokers = (process.env.OUTBOX_KAFKA_BROKERS ?? "127.0.0.1:9092").split(",");

const kafka = new Kafka({ clientId: "outbox-bench", brokers, logLevel: logLevel.NOTHING });
const admin = kafka.admin();
const pool = new pg.Pool({ connectionString: pgUrl, max: 4 });
const id = () => globalThis.crypto.randomUUID().slice(0, 8);

async function newTopic(): Promise<string> {
  const topic = `outbox-bench-${id()}`;
  await admin.createTopics({ waitForLeaders: true, topics: [{ topic, numPartitions: 3, replicationFactor: 1 }] });
  return topic;
}

const payloads = Array.from({ length: 64 }, () => randomBytes(PAYLOAD));

async function raw(batch: number): Promise<number> {
  const topic = await newTopic();
  const producer = kafka.producer({ ...defaultProducerConfig, createPartitioner: createOutboxPartitioner });
  await producer.connect();
  try {
    const cpu = measureCpu(processNames);
    const started = performance.now();
    for (let start = 0; start < ROWS; start += batch) {
      const messages = [];
      for (let n = start; n < Math.min(ROWS, start + batch); n++) {
        messages.push({
          key: `key-${n % KEYS}`,
          value: payloads[n % payloads.length] as Buffer,
          headers: { "outbox-id": String(n), "outbox-idempotency-key": String(n) },
        });
      }
      await producer.sendBatch({ acks: -1, timeout: 10_000, topicMessages: [{ topic, messages }] });
    }
    const rate = ROWS / ((performance.now() - started) / 1_000);
    cpuUse.raw.push(cpu());
    return rate;
  } finally {
    await producer.disconnect();
    await admin.deleteTopics({ topics: [topic] }).catch(() => undefined);
  }
}

/** The publisher alone (no store): the same entries as the relay would hand it. */
async function publisherOnly(batch: number): Promise<number> {
  const topic = await newTopic();
  const publisher = createKafkaPublisher({ kafka });
  try {
    await publisher.publish([]);
    const now = new Date();
    const entries = Array.from({ length: ROWS }, (_, n) => ({
      id: String(n + 1),
      topic,
      key: `key-${n % KEYS}`,
      payload: payloads[n % payloads.length] as Uint8Array,
      headers: {},
      idempotencyKey: String(n + 1),
      createdAt: now,
      availableAt: now,
      attempts: 1,
      lastError: null,
    }));
    const started = performance.now();
    for (let start = 0; start < ROWS; start += batch) {
      const outcomes = await publisher.publish(entries.slice(start, start + batch));
      if (outcomes.some((outcome) => outcome.status !== "published")) throw new Error("publish failed");
    }
    return ROWS / ((performance.now() - started) / 1_000);
  } finally {
    await publisher.close();
    await admin.deleteTopics({ topics: [topic] }).catch(() => undefined);
  }
}

async function relay(batch: number): Promise<number> {
  const topic = await newTopic();
  const table = `outbox_bench_${id()}`;
  await migrate(pool, { table });
  const store = createPostgresStore({ pool, table, listen: false, notifyChannel: false });
  const publisher = createKafkaPublisher({ kafka });
  try {
    for (let start = 0; start < ROWS; start += 1_000) {
      const messages = [];
      for (let n = start; n < Math.min(ROWS, start + 1_000); n++) {
        messages.push({ topic, key: `key-${n % KEYS}`, payload: payloads[n % payloads.length] as Uint8Array });
      }
      await store.enqueue(pool, messages);
    }
    await pool.query(`VACUUM ANALYZE "${table}"`);
    // Connect outside the timed part, like a long-running relay.
    await publisher.publish([]);
    const outbox = new OutboxRelay({ store, publisher, batchSize: batch, pollMs: 50 });
    outbox.on("error", ({ error }) => console.error(error));
    let published = 0;
    const allPublished = new Promise<void>((resolve) => {
      outbox.on("published", ({ entries }) => {
        published += entries.length;
        if (published >= ROWS) resolve();
      });
    });
    const cpu = measureCpu(processNames);
    const started = performance.now();
    outbox.start();
    await allPublished;
    const seconds = (performance.now() - started) / 1_000;
    cpuUse.relay.push(cpu());
    await outbox.stop();
    const stats = await store.stats();
    if (stats.pending !== 0 || stats.dead !== 0) throw new Error(`left ${JSON.stringify(stats)}`);
    return ROWS / seconds;
  } finally {
    await publisher.close();
    await store.close();
    await pool.query(`DROP TABLE IF EXISTS "${table}", "${table}_fence"`);
    await admin.deleteTopics({ topics: [topic] }).catch(() => undefined);
  }
}

/** PostgreSQL backends and the Kafka broker's JVM, next to this process. */
const processNames = ["postgres", "java"] as const;
const cpuUse: Record<"raw" | "relay", CpuUse[]> = { raw: [], relay: [] };
/** Mean CPU µs per entry, by process, over every run of one kind. */
function cpuPerEntry(uses: CpuUse[]): { node: number; postgres: number; kafka: number; total: number } {
  const entries = uses.length * ROWS;
  const sum = (pick: (use: CpuUse) => number) => uses.reduce((total, use) => total + pick(use), 0) / entries;
  const node = sum((use) => use.node);
  const postgres = sum((use) => use.others.get("postgres") ?? 0);
  const kafka = sum((use) => use.others.get("java") ?? 0);
  return { node, postgres, kafka, total: node + postgres + kafka };
}

const fmt = (value: number) => Math.round(value).toLocaleString("en-US");

await admin.connect();
const [{ server_version: pgVersion, fsync }] = (
  await pool.query("SELECT current_setting('server_version') AS server_version, current_setting('fsync') AS fsync")
).rows as [{ server_version: string; fsync: string }];
console.log(
  `# PostgreSQL -> Kafka relay vs raw kafkajs: ${ROWS.toLocaleString("en-US")} rows x 1 KiB, ${KEYS} keys, median of ${REPS}\n` +
    `${machineLine()}, ` +
    `kafkajs 2.2.4, Kafka 3.9.1 single node (KRaft), PostgreSQL ${pgVersion} fsync=${fsync}\n`,
);
const rows: string[] = [];
const cpuRows: string[] = [];
for (const batch of BATCHES) {
  cpuUse.raw = [];
  cpuUse.relay = [];
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
  const [rawCpu, relayCpu] = [cpuPerEntry(cpuUse.raw), cpuPerEntry(cpuUse.relay)];
  const cell = (use: typeof rawCpu) =>
    `${use.node.toFixed(0)} / ${use.postgres.toFixed(0)} / ${use.kafka.toFixed(0)} = **${use.total.toFixed(0)}**`;
  // Every process shares the machine's cores: at full use of all of them, the relay cannot pass this.
  const bound = (cpus().length * 1_000_000) / relayCpu.total;
  cpuRows.push(`| ${batch} | ${cell(rawCpu)} | ${cell(relayCpu)} | ${fmt(bound)} (${pct(bound)}) |`);
  console.error(
    `batch ${batch}: relay ${relayRuns.map(fmt).join(", ")} / raw ${rawRuns.map(fmt).join(", ")} / publisher ${publisherRuns.map(fmt).join(", ")} msg/s`,
  );
}
console.log(
  "| batch | relay PG -> Kafka (msg/s) | raw kafkajs sendBatch (msg/s) | relay / raw | publisher alone, no store (msg/s, / raw) |",
);
console.log("|---:|---:|---:|---:|---:|");
for (const row of rows) console.log(row);
console.log(
  `\n| batch | CPU µs per entry, raw: node / PostgreSQL / Kafka = total | relay: node / PostgreSQL / Kafka = total | ${cpus().length} cores / relay CPU per entry (msg/s, / raw) |`,
);
console.log("|---:|---:|---:|---:|");
for (const row of cpuRows) console.log(row);
await admin.disconnect();
await pool.end();
