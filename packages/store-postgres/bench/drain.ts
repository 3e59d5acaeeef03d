// The claim contract's speed against the database's own ceiling, measured in one run:
// - ceilings: a bare claim-by-UPDATE + ack drain, and a bare DELETE ... SKIP LOCKED drain;
// - workloads: distinct keys, 1,000 keys, and one hot key with 1k / 10k / 100k entries behind it;
// - commit -> publish latency at a steady 500 entries/s with NOTIFY wake-ups;
// - PGlite, the embedded default.
//
//   bash scripts/run bench      or      pnpm --filter @outbox/store-postgres bench
//
// Every figure comes from the package defaults: the store as createPostgresStore makes it (LISTEN
// on, claim timeout), the relay's default batch size, poll interval and batches in flight, the
// table as migrate() makes it, statistics left to autovacuum (no ANALYZE, no CHECKPOINT before a
// drain), the clock stopped when the relay has recorded the last ack. OUTBOX_BENCH_BATCH runs a
// tuned batch size instead (the ceilings use the same batch), labelled as such in the output.
//
// Environment: OUTBOX_PG_URL, OUTBOX_BENCH_ROWS (default 20000), OUTBOX_BENCH_PAYLOAD (bytes,
// default 1024), OUTBOX_BENCH_BATCH (default: the relay's, 32), OUTBOX_BENCH_RUNS (default 3,
// medians), OUTBOX_BENCH_HOT (hot-key backlogs, default "1000,10000,100000"),
// OUTBOX_BENCH_IN_FLIGHT (relay batches in flight to compare, default "2", the relay's default),
// OUTBOX_BENCH_PGLITE=0 to skip PGlite.
import { PGlite } from "@electric-sql/pglite";
import type { OutboxMessage, OutboxRelayOptions, OutboxStore } from "@outbox/core";
import { createPostgresStore, migrate, type PostgresStore } from "@outbox/store-postgres";
import { median } from "@outbox/test-support/bench";
import pg from "pg";
import { commitToPublish, describeMachine, inTransaction, relayDrain } from "./support.js";

const url = process.env.OUTBOX_PG_URL ?? "postgres://postgres:postgres@127.0.0.1:5432/outbox_test";
const rows = Number(process.env.OUTBOX_BENCH_ROWS ?? 20_000);
const payloadBytes = Number(process.env.OUTBOX_BENCH_PAYLOAD ?? 1024);
/** The relay's default batch size, unless a tuned one is asked for. */
const relayDefaultBatch = 32;
const tunedBatch = process.env.OUTBOX_BENCH_BATCH ? Number(process.env.OUTBOX_BENCH_BATCH) : undefined;
const batch = tunedBatch ?? relayDefaultBatch;
const runs = Number(process.env.OUTBOX_BENCH_RUNS ?? 3);
const hotBacklogs = (process.env.OUTBOX_BENCH_HOT ?? "1000,10000,100000").split(",").map(Number);
const inFlightChoices = (process.env.OUTBOX_BENCH_IN_FLIGHT ?? "2").split(",").map(Number);
const withPglite = process.env.OUTBOX_BENCH_PGLITE !== "0";
const payload = new Uint8Array(payloadBytes).map((_, i) => (i * 31 + 7) % 256);

const perSecond = (count: number, seconds: number): number => Math.round(count / seconds);

type Keying = (i: number) => string | null;
const distinctKeys: Keying = (i) => `key-${i}`;
const thousandKeys: Keying = (i) => `key-${i % 1_000}`;
const hotKey: Keying = () => "hot";

const pool = new pg.Pool({ connectionString: url, max: 8 });
pool.on("error", () => undefined);

/** A fresh outbox schema filled with `count` entries keyed by `keying`. */
async function freshOutbox(count: number, keying: Keying): Promise<{ schema: string; drop(): Promise<void> }> {
  const schema = `bench_${globalThis.crypto.randomUUID().replaceAll("-", "").slice(0, 10)}`;
  await migrate(pool, { schema });
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
  return { schema, drop: async () => void (await pool.query(`DROP SCHEMA "${schema}" CASCADE`)) };
}

/** Bare SQL, no key rules: the fastest a claim/ack (or delete) drain of this table can go. */
async function bareDrain(schema: string, count: number, how: "update" | "delete"): Promise<number> {
  const t = `"${schema}".outbox`;
  const pick = `SELECT id FROM ${t} WHERE status = 'pending' ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED`;
  const claim =
    how === "update"
      ? `WITH c AS (${pick}) UPDATE ${t} o SET lease_until = now() + interval '1 minute', claimed_by = 'bare',
           attempts = o.attempts + 1 FROM c WHERE o.id = c.id RETURNING o.id, o.topic, o.key, o.payload, o.headers`
      : `WITH c AS (${pick}) DELETE FROM ${t} o USING c WHERE o.id = c.id RETURNING o.id, o.topic, o.key, o.payload, o.headers`;
  const ack = `UPDATE ${t} SET status = 'published', settled_at = now(), lease_until = NULL WHERE id = ANY($1::bigint[])`;
  const start = performance.now();
  let drained = 0;
  for (;;) {
    const { rows: claimed } = await pool.query(claim, [batch]);
    if (claimed.length === 0) break;
    if (how === "update") await pool.query(ack, [claimed.map((row) => row.id)]);
    drained += claimed.length;
  }
  if (drained !== count) throw new Error(`bare ${how} drained ${drained} of ${count}`);
  return (performance.now() - start) / 1000;
}

/** The store alone: claim, ack, repeat. */
async function storeDrain(store: PostgresStore, count: number): Promise<number> {
  const start = performance.now();
  let drained = 0;
  while (drained < count) {
    const entries = await store.claim({ claimer: "bench", limit: batch, leaseMs: 60_000 });
    if (entries.length === 0) throw new Error(`store drain stalled at ${drained} of ${count}`);
    await store.ack(
      entries.map((entry) => entry.id),
      { claimer: "bench" },
    );
    drained += entries.length;
  }
  return (performance.now() - start) / 1000;
}

type Measure = "bare-update" | "bare-delete" | "store" | `relay-${number}`;

/** The relay's options in the drains: the package defaults, `OUTBOX_BENCH_BATCH` when tuned. */
function relayOptions(maxInFlightBatches: number): Partial<OutboxRelayOptions> {
  return { maxInFlightBatches, ...(tunedBatch ? { batchSize: tunedBatch } : {}) };
}

/** One drain of a fresh outbox: entries/s. */
async function measureOnce(count: number, keying: Keying, what: Measure): Promise<number> {
  const outbox = await freshOutbox(count, keying);
  try {
    if (what === "bare-update") return perSecond(count, await bareDrain(outbox.schema, count, "update"));
    if (what === "bare-delete") return perSecond(count, await bareDrain(outbox.schema, count, "delete"));
    const store = createPostgresStore({ pool, schema: outbox.schema });
    try {
      return perSecond(
        count,
        what === "store"
          ? await storeDrain(store, count)
          : await relayDrain(store as OutboxStore<never>, count, relayOptions(Number(what.slice("relay-".length)))),
      );
    } finally {
      await store.close();
    }
  } finally {
    await outbox.drop();
  }
}

/** Commit -> publish latency of single-entry transactions at a steady rate, woken by NOTIFY. */
async function latency(rate: number, seconds: number): Promise<{ p50: number; p99: number; max: number }> {
  const schema = `bench_${globalThis.crypto.randomUUID().replaceAll("-", "").slice(0, 10)}`;
  await migrate(pool, { schema });
  try {
    const store = createPostgresStore({ pool, schema });
    const relay = tunedBatch ? { batchSize: tunedBatch } : {};
    return await commitToPublish(pool, store, { rate, seconds, payload, warmUpMs: 500, relay });
  } finally {
    await pool.query(`DROP SCHEMA "${schema}" CASCADE`);
  }
}

async function pgliteRelay(count: number): Promise<number> {
  const times: number[] = [];
  for (let run = 0; run < runs; run++) {
    const db = await PGlite.create();
    await migrate(db);
    const store = createPostgresStore({ db, listen: false });
    for (let done = 0; done < count; done += 2_000) {
      const messages = Array.from({ length: Math.min(2_000, count - done) }, (_, i) => ({
        topic: "bench",
        key: thousandKeys(done + i),
        payload,
      }));
      await db.transaction((tx) => store.enqueue(tx, messages));
    }
    times.push(await relayDrain(store as OutboxStore<never>, count, relayOptions(2)));
    await store.close();
    await db.close();
  }
  return perSecond(count, median(times));
}

const table: string[] = [];
const row = (...cells: Array<string | number>) => {
  const line = `| ${cells.map((c) => (typeof c === "number" ? c.toLocaleString("en-US") : c)).join(" | ")} |`;
  table.push(line);
  console.error(line);
};

console.log(await describeMachine(pool));
console.log(
  `${payloadBytes}-byte entries, batch ${batch}${tunedBatch ? " (tuned)" : " (the relay's default)"}; ${runs} rounds (each: the ceilings, then every workload, each on a fresh table); medians, ratios against the same round's ceiling\n`,
);

interface Workload {
  label: string;
  what: string;
  count: number;
  keying: Keying;
  measure: Measure;
}
const ceilings: Workload[] = [
  {
    label: `${rows} rows`,
    what: "ceiling: bare claim-by-UPDATE + ack",
    count: rows,
    keying: distinctKeys,
    measure: "bare-update",
  },
  {
    label: `${rows} rows`,
    what: "ceiling: bare DELETE ... SKIP LOCKED",
    count: rows,
    keying: distinctKeys,
    measure: "bare-delete",
  },
];
const workloads: Workload[] = [];
const withRelays = (label: string, count: number, keying: Keying) => {
  workloads.push({ label, what: "store claim + ack", count, keying, measure: "store" });
  for (const inFlight of inFlightChoices) {
    const what = `relay, ${inFlight} batch${inFlight === 1 ? "" : "es"} in flight`;
    workloads.push({ label, what, count, keying, measure: `relay-${inFlight}` });
  }
};
withRelays(`${rows} rows, distinct keys`, rows, distinctKeys);
withRelays(`${rows} rows, 1,000 keys`, rows, thousandKeys);
for (const backlog of hotBacklogs) withRelays(`one hot key, ${backlog} behind it`, backlog, hotKey);

// Rounds, not one workload after another: each round measures the ceilings and every workload
// once, so slow drift on the machine (autovacuum, the page cache) falls on all of them alike,
// and each ratio is taken against the ceiling of its own round. Medians over the rounds.
const rates = new Map<Workload, number[]>();
const ratios = new Map<Workload, { update: number[]; delete: number[] }>();
for (let round = 0; round < runs; round++) {
  const [update, del] = [
    await measureOnce(rows, distinctKeys, "bare-update"),
    await measureOnce(rows, distinctKeys, "bare-delete"),
  ];
  rates.set(ceilings[0] as Workload, [...(rates.get(ceilings[0] as Workload) ?? []), update]);
  rates.set(ceilings[1] as Workload, [...(rates.get(ceilings[1] as Workload) ?? []), del]);
  for (const workload of workloads) {
    const rate = await measureOnce(workload.count, workload.keying, workload.measure);
    rates.set(workload, [...(rates.get(workload) ?? []), rate]);
    const ratio = ratios.get(workload) ?? { update: [], delete: [] };
    ratio.update.push(rate / update);
    ratio.delete.push(rate / del);
    ratios.set(workload, ratio);
  }
  console.error(`round ${round + 1} of ${runs} done`);
}
const x = (values: number[]) => `${median(values).toFixed(2)}x`;
row("workload", "what", "entries/s", "vs claim-by-UPDATE ceiling", "vs DELETE ceiling");
row("---", "---", "---:", "---:", "---:");
row(ceilings[0]?.label ?? "", ceilings[0]?.what ?? "", median(rates.get(ceilings[0] as Workload) ?? []), "1.00x", "");
row(ceilings[1]?.label ?? "", ceilings[1]?.what ?? "", median(rates.get(ceilings[1] as Workload) ?? []), "", "1.00x");
for (const workload of workloads) {
  const ratio = ratios.get(workload) ?? { update: [], delete: [] };
  const hot = workload.keying === hotKey;
  row(workload.label, workload.what, median(rates.get(workload) ?? []), x(ratio.update), hot ? "" : x(ratio.delete));
}

const lat = await latency(500, 5);
console.log(table.join("\n"));
console.log(
  `\ncommit -> publish latency at 500 entries/s (NOTIFY wake-ups, default poll): p50 ${lat.p50.toFixed(2)} ms, p99 ${lat.p99.toFixed(2)} ms, max ${lat.max.toFixed(2)} ms`,
);
if (withPglite)
  console.log(
    `PGlite (in-process), ${rows} rows over 1,000 keys, relay: ${(await pgliteRelay(rows)).toLocaleString("en-US")} entries/s`,
  );
await pool.end();
