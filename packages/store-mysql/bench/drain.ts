// Drain-rate benchmark on MariaDB, beside packages/store-postgres/bench: a pre-filled outbox
// table drained through the store (claim + ack loop) and through the relay with the in-memory
// publisher, for the same workloads, and a bare-SQL ceiling measured in the same run.
//
//   pnpm --filter @outbox/store-mysql bench      (needs scripts/services.sh's MariaDB)
//
// Environment: OUTBOX_MYSQL_URL, OUTBOX_BENCH_RUNS (default 3: the table shows the median run).
import { execFileSync } from "node:child_process";
import { cpus, totalmem } from "node:os";
import { MemoryPublisher, type OutboxMessage, OutboxRelay } from "@outbox/core";
import { createMySqlStore, type MySqlStore, migrate } from "@outbox/store-mysql";
import mysql from "mysql2/promise";

const url = process.env.OUTBOX_MYSQL_URL ?? "mysql://outbox:outbox@127.0.0.1:3306/outbox_test";
const runs = Number(process.env.OUTBOX_BENCH_RUNS ?? 3);
const BATCH = 256;
const payload = new Uint8Array(1024).map((_, i) => (i * 31 + 7) % 256);

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] as number;
}

function cpuModel(): string {
  try {
    const out = execFileSync("lscpu", { encoding: "utf8" });
    return /Model name:\s*(.+)/.exec(out)?.[1]?.trim() ?? cpus()[0]?.model ?? "unknown";
  } catch {
    return cpus()[0]?.model ?? "unknown";
  }
}

const pool = mysql.createPool({ uri: url, connectionLimit: 6 });

interface Workload {
  name: string;
  rows: number;
  key: (i: number) => string | null;
}
const workloads: Workload[] = [
  { name: "20,000 x 1 KiB, no keys", rows: 20_000, key: () => null },
  { name: "20,000 x 1 KiB, 1,000 keys", rows: 20_000, key: (i) => `key-${i % 1_000}` },
  { name: "20,000 x 1 KiB, distinct keys", rows: 20_000, key: (i) => `key-${i}` },
  { name: "hot key, 1,000 backlog", rows: 1_000, key: () => "hot" },
  { name: "hot key, 10,000 backlog", rows: 10_000, key: () => "hot" },
];

async function prefill(store: MySqlStore, w: Workload): Promise<void> {
  for (let done = 0; done < w.rows; done += 1_000) {
    const count = Math.min(1_000, w.rows - done);
    const messages: OutboxMessage[] = Array.from({ length: count }, (_, i) => ({
      topic: "bench",
      key: w.key(done + i),
      payload,
    }));
    await store.transaction((tx) => store.enqueue(tx, messages));
  }
  await pool.query(`ANALYZE TABLE \`${store.names.table}\``);
}

async function fresh(): Promise<{ store: MySqlStore; drop: () => Promise<void> }> {
  const table = `bench_${globalThis.crypto.randomUUID().replaceAll("-", "").slice(0, 10)}`;
  await migrate(pool, { table });
  const store = createMySqlStore({ pool, table });
  return {
    store,
    drop: async () => {
      await store.close();
      await pool.query(`DROP TABLE \`${table}\`, \`${table}_fence\``);
    },
  };
}

type Mode = (store: MySqlStore, rows: number) => Promise<void>;

const storeLoop: Mode = async (store, rows) => {
  let drained = 0;
  for (;;) {
    const entries = await store.claim({ claimer: "bench", limit: BATCH, leaseMs: 60_000 });
    if (entries.length === 0) break;
    await store.ack(
      entries.map((e) => e.id),
      { claimer: "bench" },
    );
    drained += entries.length;
  }
  if (drained !== rows) throw new Error(`drained ${drained} of ${rows}`);
};

const relayMode: Mode = async (store, rows) => {
  const publisher = new MemoryPublisher();
  const relay = new OutboxRelay({ store, publisher, batchSize: BATCH, pollMs: 5 });
  relay.start();
  while (publisher.messages.length < rows) await new Promise((resolve) => setTimeout(resolve, 2));
  await relay.stop();
  if (publisher.messages.length !== rows) throw new Error(`published ${publisher.messages.length} of ${rows}`);
};

// The ceilings: what bare SQL on the same table does with no key order, no fencing, no runs.
const ceilingUpdate: Mode = async (store, rows) => {
  const t = `\`${store.names.table}\``;
  let drained = 0;
  for (let batch = 0; ; batch++) {
    const token = `b${batch}`;
    await pool.query(
      `UPDATE ${t} SET claimed_by = ?, lease_until = ? WHERE status = 0 AND lease_until IS NULL ORDER BY id LIMIT ?`,
      [token, Date.now() + 60_000, BATCH],
    );
    const [claimed] = await pool.query<mysql.RowDataPacket[]>(
      `SELECT id, topic, entry_key, payload, headers FROM ${t} FORCE INDEX (outbox_pending_idx)
       WHERE status = 0 AND claimed_by = ? ORDER BY id LIMIT ?`,
      [token, BATCH],
    );
    if (claimed.length === 0) break;
    await pool.query(`UPDATE ${t} SET status = 1, settled_at = ? WHERE id IN (?)`, [
      Date.now(),
      claimed.map((r) => r.id),
    ]);
    drained += claimed.length;
  }
  if (drained !== rows) throw new Error(`ceiling drained ${drained} of ${rows}`);
};

const ceilingDelete: Mode = async (store, rows) => {
  const t = `\`${store.names.table}\``;
  let drained = 0;
  for (;;) {
    const conn = await pool.getConnection();
    try {
      await conn.query("START TRANSACTION");
      const [claimed] = await conn.query<mysql.RowDataPacket[]>(
        `SELECT id, topic, entry_key, payload, headers FROM ${t} FORCE INDEX (outbox_pending_idx)
         WHERE status = 0 ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED`,
        [BATCH],
      );
      if (claimed.length > 0) {
        await conn.query(`DELETE FROM ${t} WHERE id IN (?)`, [claimed.map((r) => r.id)]);
      }
      await conn.query("COMMIT");
      drained += claimed.length;
      if (claimed.length === 0) break;
    } finally {
      conn.release();
    }
  }
  if (drained !== rows) throw new Error(`ceiling drained ${drained} of ${rows}`);
};

async function measure(w: Workload, mode: Mode): Promise<number> {
  const times: number[] = [];
  for (let run = 0; run < runs; run++) {
    const { store, drop } = await fresh();
    await prefill(store, w);
    const start = performance.now();
    await mode(store, w.rows);
    times.push((performance.now() - start) / 1000);
    await drop();
  }
  return w.rows / median(times);
}

const [[server]] = await pool.query<mysql.RowDataPacket[]>(
  "SELECT VERSION() AS v, @@innodb_flush_log_at_trx_commit AS flush, @@sync_binlog AS sb, @@log_bin AS lb",
);
console.log(
  `Machine: ${cpuModel()}, ${cpus().length} cores, ${Math.round(totalmem() / 2 ** 30)} GiB; Node ${process.version}`,
);
console.log(
  `Server: MariaDB ${server?.v}, innodb_flush_log_at_trx_commit=${server?.flush} (durable commits), log_bin=${server?.lb}`,
);
console.log(`Batch ${BATCH}, 1 KiB payloads, median of ${runs} runs\n`);

const results: Array<{ workload: string; mode: string; rate: number; ceiling?: number }> = [];
const report = (workload: string, mode: string, rate: number, ceiling?: number) => {
  results.push({ workload, mode, rate, ceiling });
  console.error(`  ${workload} | ${mode}: ${Math.round(rate)} entries/s`);
};

const plain = workloads[0] as Workload;
const updateCeiling = await measure(plain, ceilingUpdate);
report(plain.name, "ceiling: bare UPDATE ... ORDER BY id LIMIT claim + ack", updateCeiling);
const deleteCeiling = await measure(plain, ceilingDelete);
report(plain.name, "ceiling: bare SELECT ... SKIP LOCKED + DELETE", deleteCeiling);
report(plain.name, "store claim + ack", await measure(plain, storeLoop), updateCeiling);
for (const w of workloads) report(w.name, "relay + memory publisher", await measure(w, relayMode), updateCeiling);

console.log("\n| workload | mode | entries/s | vs bare UPDATE claim + ack | vs bare DELETE drain |");
console.log("|---|---|---:|---:|---:|");
for (const r of results) {
  const ratio = (ceiling: number) => (r.ceiling === undefined ? "" : `${(r.rate / ceiling).toFixed(2)}x`);
  console.log(
    `| ${r.workload} | ${r.mode} | ${Math.round(r.rate).toLocaleString("en-US")} | ${ratio(updateCeiling)} | ${ratio(deleteCeiling)} |`,
  );
}
console.log(`\nbare DELETE drain / bare UPDATE claim + ack: ${(deleteCeiling / updateCeiling).toFixed(2)}x`);
await pool.end();
