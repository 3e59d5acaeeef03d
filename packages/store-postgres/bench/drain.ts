// Drain-rate benchmark: a pre-filled outbox table drained through the store alone (claim + ack
// loop) and through the relay with the in-memory publisher, for several batch sizes.
//
//   pnpm --filter @outbox/store-postgres bench      (builds first; needs the local PostgreSQL)
//
// Environment: OUTBOX_PG_URL, OUTBOX_BENCH_ROWS (default 20000), OUTBOX_BENCH_PAYLOAD (bytes,
// default 1024), OUTBOX_BENCH_BATCHES (default "32,256,1024"), OUTBOX_BENCH_RUNS (default 3: the
// table shows the median run), OUTBOX_BENCH_PGLITE=0 to skip PGlite.
import { execFileSync } from "node:child_process";
import { cpus, totalmem } from "node:os";
import { PGlite } from "@electric-sql/pglite";
import { MemoryPublisher, OutboxRelay } from "@outbox/core";
import { createPostgresStore, migrate, type PostgresStore, type Queryable } from "@outbox/store-postgres";
import pg from "pg";

const url = process.env.OUTBOX_PG_URL ?? "postgres://postgres:postgres@127.0.0.1:5432/outbox_test";
const rows = Number(process.env.OUTBOX_BENCH_ROWS ?? 20_000);
const payloadBytes = Number(process.env.OUTBOX_BENCH_PAYLOAD ?? 1024);
const batches = (process.env.OUTBOX_BENCH_BATCHES ?? "32,256,1024").split(",").map(Number);
const withPglite = process.env.OUTBOX_BENCH_PGLITE !== "0";
const runs = Number(process.env.OUTBOX_BENCH_RUNS ?? 3);

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] as number;
}

interface Result {
  target: string;
  mode: string;
  batch: number;
  seconds: number;
}

const results: Result[] = [];
const payload = new Uint8Array(payloadBytes).map((_, i) => (i * 31 + 7) % 256);

function cpuModel(): string {
  try {
    const out = execFileSync("lscpu", { encoding: "utf8" });
    return /Model name:\s*(.+)/.exec(out)?.[1]?.trim() ?? cpus()[0]?.model ?? "unknown";
  } catch {
    return cpus()[0]?.model ?? "unknown";
  }
}

async function prefill(
  store: PostgresStore,
  transaction: (work: (tx: Queryable) => Promise<unknown>) => Promise<unknown>,
  keys: number,
) {
  for (let done = 0; done < rows; done += 1_000) {
    const count = Math.min(1_000, rows - done);
    await transaction((tx) =>
      store.enqueue(
        tx,
        Array.from({ length: count }, (_, i) => ({
          topic: "bench",
          key: keys > 0 ? `key-${(done + i) % keys}` : null,
          payload,
        })),
      ),
    );
  }
}

async function drainStore(store: PostgresStore, batch: number): Promise<number> {
  const start = performance.now();
  let drained = 0;
  for (;;) {
    const entries = await store.claim({ claimer: "bench", limit: batch, leaseMs: 60_000 });
    if (entries.length === 0) break;
    await store.ack(
      entries.map((entry) => entry.id),
      { claimer: "bench" },
    );
    drained += entries.length;
  }
  if (drained !== rows) throw new Error(`drained ${drained} of ${rows}`);
  return (performance.now() - start) / 1000;
}

async function drainRelay(store: PostgresStore, batch: number): Promise<number> {
  const publisher = new MemoryPublisher();
  const relay = new OutboxRelay({ store, publisher, batchSize: batch });
  const start = performance.now();
  while ((await relay.runOnce()) > 0) {
    // keep going until a cycle claims nothing
  }
  const seconds = (performance.now() - start) / 1000;
  if (publisher.messages.length !== rows) throw new Error(`published ${publisher.messages.length} of ${rows}`);
  return seconds;
}

type Mode = { name: string; keys: number; asyncAcks: boolean; run: (s: PostgresStore, b: number) => Promise<number> };
const modes: Mode[] = [
  // Durable acks are the store's default; async acks are the opt-in `asyncAcks: true`.
  { name: "store claim+ack", keys: 0, asyncAcks: false, run: drainStore },
  { name: "store claim+ack, async acks", keys: 0, asyncAcks: true, run: drainStore },
  { name: "relay + memory publisher", keys: 0, asyncAcks: false, run: drainRelay },
  { name: "relay + memory publisher, 1000 keys", keys: 1_000, asyncAcks: false, run: drainRelay },
];

async function benchPg(): Promise<void> {
  const pool = new pg.Pool({ connectionString: url, max: 4 });
  pool.on("error", () => undefined);
  const settings = await pool.query(
    "SELECT current_setting('fsync') AS fsync, current_setting('synchronous_commit') AS sc, version() AS version",
  );
  const { fsync, sc, version } = settings.rows[0] as { fsync: string; sc: string; version: string };
  console.log(`PostgreSQL: ${version.split(" on ")[0]}, fsync=${fsync}, synchronous_commit=${sc}`);
  if (fsync !== "on") console.log("WARNING: fsync is off: these figures are not from a durable setup");
  for (const mode of modes) {
    for (const batch of batches) {
      const times: number[] = [];
      for (let run = 0; run < runs; run++) times.push(await onePg(pool, mode, batch));
      results.push({ target: "PostgreSQL 15 (pg Pool)", mode: mode.name, batch, seconds: median(times) });
      report(results.at(-1) as Result);
    }
  }
  await pool.end();
}

async function onePg(pool: pg.Pool, mode: Mode, batch: number): Promise<number> {
  const schema = `bench_${globalThis.crypto.randomUUID().replaceAll("-", "").slice(0, 10)}`;
  await migrate(pool, { schema });
  if (process.env.OUTBOX_BENCH_TOAST === "1") {
    await pool.query(
      `ALTER TABLE "${schema}".outbox SET (toast_tuple_target = 128), ALTER COLUMN payload SET STORAGE EXTERNAL`,
    );
  }
  const store = createPostgresStore({ pool, schema, asyncAcks: mode.asyncAcks, listen: false });
  await prefill(
    store,
    async (work) => {
      const client = await pool.connect();
      try {
        await client.query("BEGIN");
        await work(client);
        await client.query("COMMIT");
      } finally {
        client.release();
      }
    },
    mode.keys,
  );
  await pool.query(`VACUUM ANALYZE "${schema}".outbox`);
  const seconds = await mode.run(store, batch);
  await store.close();
  await pool.query(`DROP SCHEMA "${schema}" CASCADE`);
  return seconds;
}

async function benchPglite(): Promise<void> {
  for (const mode of [modes[0], modes[2]] as Mode[]) {
    for (const batch of batches) {
      const times: number[] = [];
      for (let run = 0; run < runs; run++) times.push(await onePglite(mode, batch));
      results.push({ target: "PGlite 0.5 (in-memory)", mode: mode.name, batch, seconds: median(times) });
      report(results.at(-1) as Result);
    }
  }
}

async function onePglite(mode: Mode, batch: number): Promise<number> {
  const db = await PGlite.create();
  await migrate(db);
  const store = createPostgresStore({ db, asyncAcks: mode.asyncAcks, listen: false });
  await prefill(store, (work) => db.transaction((tx) => work(tx)), mode.keys);
  const seconds = await mode.run(store, batch);
  await store.close();
  await db.close();
  return seconds;
}

function report(result: Result): void {
  console.error(
    `  ${result.target} | ${result.mode} | batch ${result.batch}: ${Math.round(rows / result.seconds)} entries/s`,
  );
}

console.log(
  `Machine: ${cpuModel()}, ${cpus().length} cores, ${Math.round(totalmem() / 2 ** 30)} GiB; Node ${process.version}`,
);
console.log(`Draining ${rows} pre-filled entries of ${payloadBytes} bytes, median of ${runs} runs\n`);
await benchPg();
if (withPglite) await benchPglite();

console.log("\n| target | mode | batch | entries/s | drain time |");
console.log("|---|---|---:|---:|---:|");
for (const r of results) {
  console.log(
    `| ${r.target} | ${r.mode} | ${r.batch} | ${Math.round(rows / r.seconds).toLocaleString("en-US")} | ${r.seconds.toFixed(2)} s |`,
  );
}
