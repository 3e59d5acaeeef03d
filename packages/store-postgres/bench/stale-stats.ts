// The trap a production outbox falls into and a prefilled, freshly analyzed benchmark never sees:
// the planner's statistics say the table holds no pending entries while tens of thousands are
// pending, a frozen relay holds the heads of half the keys, a producer keeps writing and relays
// keep draining. Every claim's latency is recorded; the claim must stay bounded (max < 100 ms).
//
//   pnpm --filter @outbox/store-postgres bench:stale
//
// How the statistics go stale: autovacuum is off for the bench table (it stands for autovacuum
// lagging behind), 20,000 entries are enqueued and published, the table is analyzed (every row
// published, none pending), then 70,000 entries over 1,000 keys are enqueued and never analyzed.
// Environment: OUTBOX_PG_URL, OUTBOX_BENCH_BATCH (relay batch size, default: the relay's default),
// OUTBOX_BENCH_SECONDS (production time, default 20), OUTBOX_BENCH_RATE (entries/s, default 500).
import { type OutboxMessage, OutboxRelay } from "@outbox/core";
import { MemoryPublisher } from "@outbox/memory";
import { createPostgresStore, migrate, type PostgresStore, type Queryable } from "@outbox/store-postgres";
import pg from "pg";
import { describeMachine, inTransaction, percentiles } from "./support.js";

const url = process.env.OUTBOX_PG_URL ?? "postgres://postgres:postgres@127.0.0.1:5432/outbox_test";
const batchSize = process.env.OUTBOX_BENCH_BATCH ? Number(process.env.OUTBOX_BENCH_BATCH) : undefined;
const seconds = Number(process.env.OUTBOX_BENCH_SECONDS ?? 20);
const rate = Number(process.env.OUTBOX_BENCH_RATE ?? 500);
const KEYS = 1_000;
const CHURN = 20_000;
const BACKLOG = 70_000;
const payload = new Uint8Array(1024).map((_, i) => (i * 31 + 7) % 256);

const pool = new pg.Pool({ connectionString: url, max: 12 });
pool.on("error", () => undefined);
const schema = `bench_${globalThis.crypto.randomUUID().replaceAll("-", "").slice(0, 10)}`;
const table = `"${schema}".outbox`;
const entries = (count: number, offset: number): OutboxMessage[] =>
  Array.from({ length: count }, (_, i) => ({ topic: "bench", key: `key-${(offset + i) % KEYS}`, payload }));
const pending = async (): Promise<number> =>
  Number((await pool.query(`SELECT count(*) AS n FROM ${table} WHERE status = 'pending'`)).rows[0].n);

console.log(await describeMachine(pool));
await migrate(pool, { schema });
await pool.query(`ALTER TABLE ${table} SET (autovacuum_enabled = false)`);
const setup = createPostgresStore({ pool, schema, listen: false });
for (let done = 0; done < CHURN; done += 1_000) {
  await inTransaction(pool, (tx: Queryable) => setup.enqueue(tx, entries(1_000, done)));
}
await pool.query(`UPDATE ${table} SET status = 'published', settled_at = now()`);
await pool.query(`ANALYZE ${table}`);
for (let done = 0; done < BACKLOG; done += 1_000) {
  await inTransaction(pool, (tx: Queryable) => setup.enqueue(tx, entries(1_000, done)));
}
// A relay that claimed the heads of half the keys and froze: its leases outlast the run.
const frozen = await setup.claim({ claimer: "frozen", limit: KEYS / 2, leaseMs: 3_600_000 });
const estimate = await pool.query(`EXPLAIN SELECT id FROM ${table} WHERE status = 'pending'`);
console.log(
  `stale statistics: the planner expects ${/rows=(\d+)/.exec(String(estimate.rows[0]["QUERY PLAN"]))?.[1]} pending rows; ` +
    `${await pending()} are pending; a frozen relay holds ${frozen.length} key heads`,
);

const claimMs: number[] = [];
const relays: OutboxRelay[] = [];
const stores: PostgresStore[] = [];
let delivered = 0;
for (let i = 0; i < 2; i++) {
  const store = createPostgresStore({ pool, schema });
  const claim = store.claim.bind(store);
  store.claim = async (request) => {
    const start = performance.now();
    try {
      return await claim(request);
    } finally {
      claimMs.push(performance.now() - start);
    }
  };
  const relay = new OutboxRelay({ store, publisher: new MemoryPublisher(), ...(batchSize ? { batchSize } : {}) });
  relay.on("error", ({ error }) => console.error(error));
  relay.on("published", ({ entries: published }) => {
    delivered += published.length;
  });
  stores.push(store);
  relays.push(relay);
  relay.start();
}

const pendingSeen: number[] = [await pending()];
const producer = createPostgresStore({ pool, schema, listen: false });
const start = performance.now();
for (let i = 0; i < rate * seconds; i += rate / 10) {
  const due = start + (i / rate) * 1000;
  const wait = due - performance.now();
  if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
  await inTransaction(pool, (tx: Queryable) => producer.enqueue(tx, entries(rate / 10, BACKLOG + i)));
  if (i % rate === 0) pendingSeen.push(await pending());
}
for (const relay of relays) await relay.stop();
for (const store of [...stores, producer, setup]) await store.close();
pendingSeen.push(await pending());

const p = percentiles(claimMs);
console.log(
  `${claimMs.length} claims (batch ${batchSize ?? "default"}, 2 relays, producer ${rate}/s for ${seconds} s, ` +
    `pending ${Math.min(...pendingSeen)}-${Math.max(...pendingSeen)}): ` +
    `claim p50 ${p.p50.toFixed(2)} ms, p99 ${p.p99.toFixed(2)} ms, max ${p.max.toFixed(2)} ms; ${delivered} entries published`,
);
await pool.query(`DROP SCHEMA "${schema}" CASCADE`);
await pool.end();
