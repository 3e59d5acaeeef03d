// Log-based capture (EXPERIMENTAL) against polling, side by side, in one run:
// - a drain of 20k entries over 1,000 keys, 1 KiB each, in-memory publisher: the bare
//   claim-by-UPDATE + ack ceiling, the polling relay, and the relay on the capture store (claim
//   served from the replication slot);
// - commit -> publish latency of single-entry transactions at 500 entries/s: polling (woken by
//   NOTIFY) and log capture (pushed by the stream: no NOTIFY, no poll).
//
//   pnpm --filter @outbox/store-postgres bench:capture
//
// Needs wal_level = logical (scripts/services.sh configures the test server). Environment:
// OUTBOX_PG_URL, OUTBOX_BENCH_ROWS (default 20000), OUTBOX_BENCH_PAYLOAD (default 1024),
// OUTBOX_BENCH_RUNS (default 3, medians), OUTBOX_BENCH_RATE (default 500), OUTBOX_BENCH_SECONDS
// (latency run length, default 10).
import { loadavg } from "node:os";
import type { OutboxMessage, OutboxStore } from "@outbox/core";
import {
  createPostgresCaptureStore,
  createPostgresStore,
  dropCapture,
  migrate,
  migrateCapture,
  type Queryable,
} from "@outbox/store-postgres";
import { median } from "@outbox/test-support/bench";
import pg from "pg";
import { commitToPublish, describeMachine, inTransaction, relayDrain } from "./support.js";

const url = process.env.OUTBOX_PG_URL ?? "postgres://postgres:postgres@127.0.0.1:5432/outbox_test";
const rows = Number(process.env.OUTBOX_BENCH_ROWS ?? 20_000);
const payloadBytes = Number(process.env.OUTBOX_BENCH_PAYLOAD ?? 1024);
const runs = Number(process.env.OUTBOX_BENCH_RUNS ?? 3);
const rate = Number(process.env.OUTBOX_BENCH_RATE ?? 500);
const latencySeconds = Number(process.env.OUTBOX_BENCH_SECONDS ?? 10);
const batch = 32;
const payload = new Uint8Array(payloadBytes).map((_, i) => (i * 31 + 7) % 256);
const keying = (i: number) => `key-${i % 1_000}`;

const perSecond = (count: number, seconds: number): number => Math.round(count / seconds);

const pool = new pg.Pool({ connectionString: url, max: 8 });
pool.on("error", () => undefined);

type Mode = "bare" | "polling" | "log";

/** A fresh schema; with `capture`, the slot exists before the entries commit. */
async function freshOutbox(capture: boolean): Promise<{ schema: string; drop(): Promise<void> }> {
  const schema = `bench_${globalThis.crypto.randomUUID().replaceAll("-", "").slice(0, 10)}`;
  await migrate(pool, { schema });
  if (capture) await migrateCapture(pool, { schema });
  return {
    schema,
    drop: async () => {
      if (capture) await dropCapture(pool, { schema });
      await pool.query(`DROP SCHEMA "${schema}" CASCADE`);
    },
  };
}

async function fill(schema: string, count: number): Promise<void> {
  const store = createPostgresStore({ pool, schema, listen: false });
  for (let done = 0; done < count; done += 2_000) {
    const messages: OutboxMessage[] = Array.from({ length: Math.min(2_000, count - done) }, (_, i) => ({
      topic: "bench",
      key: keying(done + i),
      payload,
    }));
    await inTransaction(pool, (tx) => store.enqueue(tx, messages));
  }
  await store.close();
}

async function bareDrain(schema: string, count: number): Promise<number> {
  const t = `"${schema}".outbox`;
  const claim = `WITH c AS (SELECT id FROM ${t} WHERE status = 'pending' ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
    UPDATE ${t} o SET lease_until = now() + interval '1 minute', claimed_by = 'bare', attempts = o.attempts + 1
    FROM c WHERE o.id = c.id RETURNING o.id, o.topic, o.key, o.payload, o.headers`;
  const ack = `UPDATE ${t} SET status = 'published', settled_at = now(), lease_until = NULL WHERE id = ANY($1::bigint[])`;
  const start = performance.now();
  let drained = 0;
  for (;;) {
    const { rows: claimed } = await pool.query(claim, [batch]);
    if (claimed.length === 0) break;
    await pool.query(ack, [claimed.map((row) => row.id)]);
    drained += claimed.length;
  }
  if (drained !== count) throw new Error(`bare drained ${drained} of ${count}`);
  return (performance.now() - start) / 1000;
}

function storeFor(mode: "polling" | "log", schema: string): OutboxStore<Queryable> {
  return mode === "log"
    ? createPostgresCaptureStore({ pool, schema, onError: (error) => console.error(error) })
    : createPostgresStore({ pool, schema });
}

async function drainOnce(mode: Mode): Promise<number> {
  const outbox = await freshOutbox(mode === "log");
  try {
    await fill(outbox.schema, rows);
    if (mode === "bare") return perSecond(rows, await bareDrain(outbox.schema, rows));
    const store = storeFor(mode, outbox.schema);
    try {
      return perSecond(rows, await relayDrain(store as OutboxStore<never>, rows));
    } finally {
      await store.close();
    }
  } finally {
    await outbox.drop();
  }
}

async function latency(mode: "polling" | "log"): Promise<{ p50: number; p99: number; max: number; n: number }> {
  const outbox = await freshOutbox(mode === "log");
  try {
    const store = storeFor(mode, outbox.schema) as OutboxStore<Queryable>;
    return await commitToPublish(pool, store, { rate, seconds: latencySeconds, payload, warmUpMs: 1_000 });
  } finally {
    await outbox.drop();
  }
}

console.log(await describeMachine(pool));
const load = () =>
  loadavg()
    .map((l) => l.toFixed(2))
    .join(" ");
console.log(`load average at start: ${load()}`);
console.log(
  `${rows} entries over 1,000 keys, ${payloadBytes}-byte payloads, in-memory publisher, relay defaults (batch ${batch}); ${runs} rounds, medians; ratios from the same round\n`,
);

const rates: Record<Mode, number[]> = { bare: [], polling: [], log: [] };
const ratios = { pollingVsBare: [] as number[], logVsBare: [] as number[], logVsPolling: [] as number[] };
for (let round = 0; round < runs; round++) {
  const bare = await drainOnce("bare");
  const polling = await drainOnce("polling");
  const log = await drainOnce("log");
  rates.bare.push(bare);
  rates.polling.push(polling);
  rates.log.push(log);
  ratios.pollingVsBare.push(polling / bare);
  ratios.logVsBare.push(log / bare);
  ratios.logVsPolling.push(log / polling);
  console.error(`round ${round + 1} of ${runs}: bare ${bare}/s, polling ${polling}/s, log ${log}/s`);
}
const x = (values: number[]) => `${median(values).toFixed(2)}x`;
console.log("| drain | entries/s | vs claim-by-UPDATE ceiling | vs polling relay |");
console.log("| --- | ---: | ---: | ---: |");
console.log(`| ceiling: bare claim-by-UPDATE + ack | ${median(rates.bare)} | 1.00x | |`);
console.log(`| polling relay | ${median(rates.polling)} | ${x(ratios.pollingVsBare)} | 1.00x |`);
console.log(`| log-capture relay | ${median(rates.log)} | ${x(ratios.logVsBare)} | ${x(ratios.logVsPolling)} |`);

const ms = (value: number) => value.toFixed(2);
console.log(`\n| commit -> publish at ${rate}/s for ${latencySeconds} s | p50 ms | p99 ms | max ms | published |`);
console.log("| --- | ---: | ---: | ---: | ---: |");
for (const mode of ["polling", "log"] as const) {
  const figures = await latency(mode);
  const label = mode === "log" ? "log capture (stream push)" : "polling (NOTIFY wake-ups)";
  console.log(`| ${label} | ${ms(figures.p50)} | ${ms(figures.p99)} | ${ms(figures.max)} | ${figures.n} |`);
}
console.log(`\nload average at end: ${load()}`);
await pool.end();
