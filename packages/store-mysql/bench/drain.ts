import { cpus, loadavg } from "node:os";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { type OutboxMessage, OutboxRelay } from "@outbox/core";
import { MemoryPublisher } from "@outbox/memory";
import { createMySqlStore, type MySqlStore, migrate } from "@outbox/store-mysql";
import { machineLine, median, percentiles } from "@outbox/test-support/bench";
import mysql from "mysql2/promise";

const url = process.env.OUTBOX_MYSQL_URL ?? "mysql://outbox:outbox@127.0.0.1:3306/outbox_test";
const runs = Number(process.env.OUTBOX_BENCH_RUNS ?? 3);
const parts = new Set((process.env.OUTBOX_BENCH_PARTS ?? "drain,trap,steady").split(","));
const trapBatches = (process.env.OUTBOX_BENCH_TRAP_BATCHES ?? "32,256").split(",").map(Number);
const trapSeconds = Number(process.env.OUTBOX_BENCH_TRAP_SECONDS ?? 30);
const steadySeconds = Number(process.env.OUTBOX_BENCH_STEADY_SECONDS ?? 60);
const producerRate = Number(process.env.OUTBOX_BENCH_RATE ?? 220);
const pollMs = Number(process.env.OUTBOX_BENCH_POLL_MS ?? 100);
const BATCH = 256;
const payload = new Uint8Array(1024).map((_, i) => (i * 31 + 7) % 256);

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

// ---------------------------------------------------------------- trap and steady

const KEYS = 1_000;
const keyed = (count: number, offset: number): OutboxMessage[] =>
  Array.from({ length: count }, (_, i) => ({ topic: "bench", key: `key-${(offset + i) % KEYS}`, payload }));

const ms = (value: number) => `${value.toFixed(1)} ms`;

async function freshTable(): Promise<string> {
  const table = `bench_${globalThis.crypto.randomUUID().replaceAll("-", "").slice(0, 10)}`;
  await migrate(pool, { table });
  return table;
}

async function countPending(table: string): Promise<number> {
  const [[row]] = await pool.query<mysql.RowDataPacket[]>(
    `SELECT COUNT(*) AS n FROM \`${table}\` FORCE INDEX (outbox_pending_idx) WHERE status = 0`,
  );
  return Number(row?.n);
}

/** Relays as separate processes would run them: each with its own pool and store, polling. */
interface Fleet {
  claimMs: number[];
  /** When each claim started (performance.now()), in the order of claimMs. */
  claimAt: number[];
  ackedAt: Map<string, number>;
  errors: Map<string, number>;
  stop(): Promise<void>;
}

function startRelays(table: string, count: number, batchSize: number): Fleet {
  const claimMs: number[] = [];
  const claimAt: number[] = [];
  const ackedAt = new Map<string, number>();
  const errors = new Map<string, number>();
  const running: Array<{ relay: OutboxRelay; store: MySqlStore; pool: mysql.Pool }> = [];
  for (let i = 0; i < count; i++) {
    const relayPool = mysql.createPool({ uri: url, connectionLimit: 4 });
    const store = createMySqlStore({ pool: relayPool, table, wakeUps: false });
    const claim = store.claim.bind(store);
    store.claim = async (request) => {
      const start = performance.now();
      try {
        return await claim(request);
      } finally {
        claimMs.push(performance.now() - start);
        claimAt.push(start);
      }
    };
    const ack = store.ack.bind(store);
    store.ack = async (ids, context) => {
      await ack(ids, context);
      const now = performance.now();
      for (const id of ids) ackedAt.set(id, now);
    };
    const relay = new OutboxRelay({ store, publisher: new MemoryPublisher(), batchSize, pollMs });
    relay.on("error", ({ error }) => {
      const code = (error as { code?: string }).code ?? String(error);
      errors.set(code, (errors.get(code) ?? 0) + 1);
    });
    relay.start();
    running.push({ relay, store, pool: relayPool });
  }
  return {
    claimMs,
    claimAt,
    ackedAt,
    errors,
    async stop() {
      await Promise.all(running.map((r) => r.relay.stop()));
      for (const r of running) {
        await r.store.close();
        await r.pool.end();
      }
    },
  };
}

/** Writes `producerRate` entries/s over 1,000 keys for `seconds`, 10 commits a second; returns commit times. */
async function produce(store: MySqlStore, seconds: number, offset: number, onSecond?: () => Promise<void>) {
  const committedAt = new Map<string, number>();
  const perTick = Math.max(1, Math.round(producerRate / 10));
  const start = performance.now();
  for (let tick = 0; tick < seconds * 10; tick++) {
    const wait = start + tick * 100 - performance.now();
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    const ids = await store.transaction((tx) => store.enqueue(tx, keyed(perTick, offset + tick * perTick)));
    const now = performance.now();
    for (const id of ids) committedAt.set(id, now);
    if (tick % 10 === 9) await onSecond?.();
  }
  return committedAt;
}

function latencies(committedAt: ReadonlyMap<string, number>, ackedAt: ReadonlyMap<string, number>): number[] {
  const out: number[] = [];
  for (const [id, at] of committedAt) {
    const acked = ackedAt.get(id);
    if (acked !== undefined) out.push(Math.max(0, acked - at));
  }
  return out;
}

/** Commit -> ack p50/p99 per 5 s window of commit time (a backlog drains first, then steady state). */
function deliveryWindows(committedAt: ReadonlyMap<string, number>, ackedAt: ReadonlyMap<string, number>): string {
  const first = Math.min(...committedAt.values());
  const windows: number[][] = [];
  for (const [id, at] of committedAt) {
    const acked = ackedAt.get(id);
    if (acked === undefined) continue;
    const index = Math.floor((at - first) / 5_000);
    windows[index] = [...(windows[index] ?? []), Math.max(0, acked - at)];
  }
  return Array.from(windows, (w) => {
    if (w === undefined) return "-";
    const p = percentiles(w);
    return `${p.p50.toFixed(0)}/${p.p99.toFixed(0)}`;
  }).join(", ");
}

/** Claim latency p99/max per 5 s window of the run. */
function claimWindows(fleet: Fleet): string {
  const first = Math.min(...fleet.claimAt);
  const windows: number[][] = [];
  fleet.claimAt.forEach((at, i) => {
    const index = Math.floor((at - first) / 5_000);
    windows[index] = [...(windows[index] ?? []), fleet.claimMs[i] as number];
  });
  return Array.from(windows, (w) => {
    if (w === undefined) return "-";
    const p = percentiles(w);
    return `${p.p99.toFixed(0)}/${p.max.toFixed(0)}`;
  }).join(", ");
}

function errorLine(errors: ReadonlyMap<string, number>): string {
  return errors.size === 0 ? "none" : [...errors].map(([code, n]) => `${code} x${n}`).join(", ");
}

async function trap(batchSize: number): Promise<void> {
  const table = await freshTable();
  const t = `\`${table}\``;
  // Statistics taken while the table is empty, and never again (STATS_AUTO_RECALC=0 stands for
  // InnoDB's background recalculation lagging behind a table that fills and drains).
  await pool.query(`ALTER TABLE ${t} STATS_PERSISTENT=1 STATS_AUTO_RECALC=0`);
  await pool.query(`ANALYZE TABLE ${t}`);
  const setup = createMySqlStore({ pool, table, wakeUps: false });
  // The heads of keys 0-499, then a backlog of 35,000 entries: 31,500 behind those heads, 3,500
  // on keys 500-999 (every tenth entry).
  await setup.transaction((tx) => setup.enqueue(tx, keyed(KEYS / 2, 0)));
  const backlog = (i: number) => (i % 10 === 9 ? KEYS / 2 + (i % (KEYS / 2)) : i % (KEYS / 2));
  for (let done = 0; done < 35_000; done += 1_000) {
    const messages = Array.from({ length: 1_000 }, (_, i) => ({
      topic: "bench",
      key: `key-${backlog(done + i)}`,
      payload,
    }));
    await setup.transaction((tx) => setup.enqueue(tx, messages));
  }
  // As after a server restart: InnoDB reloads the table's statistics from mysql.innodb_*_stats
  // (renaming the table away and back evicts it from the dictionary cache), row count included.
  await pool.query(`RENAME TABLE ${t} TO \`${table}_x\`, \`${table}_x\` TO ${t}`);
  // A relay that claimed the heads of keys 0-499 and froze: its leases outlast the run.
  const frozen = await setup.claim({ claimer: "frozen", limit: KEYS / 2, leaseMs: 3_600_000 });
  const [[stats]] = await pool.query<mysql.RowDataPacket[]>(
    `SELECT NUM_ROWS AS n FROM information_schema.INNODB_SYS_TABLESTATS WHERE NAME = CONCAT(DATABASE(), '/', ?)`,
    [table],
  );
  const [[keyStats]] = await pool.query<mysql.RowDataPacket[]>(
    `SELECT stat_value AS n FROM mysql.innodb_index_stats
     WHERE database_name = DATABASE() AND table_name = ? AND index_name = 'outbox_key_idx' AND stat_name = 'n_diff_pfx02'`,
    [table],
  );
  const pendingAtStart = await countPending(table);
  console.log(
    `\n## trap: batch ${batchSize}; statistics taken on the empty table (distinct (status, key_hash) in ` +
      `the key index: ${keyStats?.n}; InnoDB's row count: ${stats?.n}); ${pendingAtStart} pending over ` +
      `${KEYS} keys; a frozen relay holds ${frozen.length} key heads`,
  );
  // Probe: claims at exactly this state, each released at once, on a one-connection pool so that
  // the session's handler counters count the rows each claim read (work, whatever the load).
  const probePool = mysql.createPool({ uri: url, connectionLimit: 1 });
  const probeStore = createMySqlStore({ pool: probePool, table, wakeUps: false });
  const handlerReads = async () => {
    const [rows] = await probePool.query<mysql.RowDataPacket[]>("SHOW SESSION STATUS LIKE 'Handler_read%'");
    return rows.reduce((sum, r) => sum + Number(r.Value), 0);
  };
  const probeMs: number[] = [];
  const probeReads: number[] = [];
  let probeClaimed = 0;
  for (let i = 0; i < 20; i++) {
    const before = await handlerReads();
    const start = performance.now();
    const claimed = await probeStore.claim({ claimer: "probe", limit: batchSize, leaseMs: 60_000 });
    probeMs.push(performance.now() - start);
    probeReads.push((await handlerReads()) - before);
    probeClaimed += claimed.length;
    await probeStore.release(
      claimed.map((e) => e.id),
      { claimer: "probe" },
    );
  }
  await probeStore.close();
  await probePool.end();
  const probe = percentiles(probeMs);
  console.log(
    `probe, 20 claims at ${pendingAtStart} pending (no other load from this bench): ${probeClaimed / 20} entries ` +
      `each, ${percentiles(probeReads).p50} index/row reads (Handler_read_*) each; p50 ${ms(probe.p50)}, ` +
      `p99 ${ms(probe.p99)}, max ${ms(probe.max)}`,
  );
  const fleet = startRelays(table, 3, batchSize);
  const loop = monitorEventLoopDelay({ resolution: 5 });
  loop.enable();
  const pendingSeen = [pendingAtStart];
  const committedAt = await produce(setup, trapSeconds, 0, async () => {
    pendingSeen.push(await countPending(table));
  });
  loop.disable();
  await fleet.stop();
  pendingSeen.push(await countPending(table));
  const claim = percentiles(fleet.claimMs);
  const delivery = percentiles(latencies(committedAt, fleet.ackedAt));
  console.log(
    `3 relays (poll ${pollMs} ms) + producer ${producerRate}/s for ${trapSeconds} s, pending ` +
      `${Math.min(...pendingSeen)}-${Math.max(...pendingSeen)}: ${fleet.claimMs.length} claims, ` +
      `claim p50 ${ms(claim.p50)}, p99 ${ms(claim.p99)}, max ${ms(claim.max)}; ${fleet.ackedAt.size} entries acked; ` +
      `commit -> ack of the producer's entries on free keys p50 ${ms(delivery.p50)}, p99 ${ms(delivery.p99)}; ` +
      `relay errors: ${errorLine(fleet.errors)}`,
  );
  console.log(
    `  this process's event-loop delay p99 ${ms(loop.percentile(99) / 1e6)}, max ${ms(loop.max / 1e6)}; ` +
      `machine load average ${loadavg()[0]?.toFixed(1)} on ${cpus().length} cores`,
  );
  console.log(`  commit -> ack by 5 s window of commit time (p50/p99): ${deliveryWindows(committedAt, fleet.ackedAt)}`);
  console.log(`  claim latency by 5 s window (p99/max): ${claimWindows(fleet)}`);
  await setup.close();
  await pool.query(`DROP TABLE ${t}, \`${table}_fence\``);
}

async function steady(): Promise<void> {
  const table = await freshTable();
  const producer = createMySqlStore({ pool, table, wakeUps: false });
  const fleet = startRelays(table, 3, 32);
  console.log(
    `\n## steady: producer ${producerRate}/s over ${KEYS} keys for ${steadySeconds} s, 3 relays ` +
      `(batch 32, poll ${pollMs} ms), memory publisher`,
  );
  const loop = monitorEventLoopDelay({ resolution: 5 });
  loop.enable();
  const start = performance.now();
  const committedAt = await produce(producer, steadySeconds, 0);
  // Let the last commits go out before stopping.
  const deadline = performance.now() + 10_000;
  while (fleet.ackedAt.size < committedAt.size && performance.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  loop.disable();
  await fleet.stop();
  const windows: number[] = Array.from({ length: Math.ceil(steadySeconds / 5) }, () => 0);
  for (const at of fleet.ackedAt.values()) {
    const index = Math.floor((at - start) / 5_000);
    if (index < windows.length) windows[index] = (windows[index] ?? 0) + 1;
  }
  const delivery = percentiles(latencies(committedAt, fleet.ackedAt));
  const claim = percentiles(fleet.claimMs);
  console.log(`delivered per 5 s window: ${windows.join(", ")}`);
  console.log(
    `${committedAt.size} committed, ${fleet.ackedAt.size} acked; commit -> ack p50 ${ms(delivery.p50)}, ` +
      `p99 ${ms(delivery.p99)}, max ${ms(delivery.max)}; claim p50 ${ms(claim.p50)}, p99 ${ms(claim.p99)}, ` +
      `max ${ms(claim.max)}; relay errors: ${errorLine(fleet.errors)}`,
  );
  console.log(
    `  this process's event-loop delay p99 ${ms(loop.percentile(99) / 1e6)}, max ${ms(loop.max / 1e6)}; ` +
      `machine load average ${loadavg()[0]?.toFixed(1)} on ${cpus().length} cores`,
  );
  await producer.close();
  await pool.query(`DROP TABLE \`${table}\`, \`${table}_fence\``);
}

const [[server]] = await pool.query<mysql.RowDataPacket[]>(
  "SELECT VERSION() AS v, @@innodb_flush_log_at_trx_commit AS flush, @@sync_binlog AS sb, @@log_bin AS lb",
);
console.log(machineLine());
console.log(
  `Server: MariaDB ${server?.v}, innodb_flush_log_at_trx_commit=${server?.flush} (durable commits), log_bin=${server?.lb}`,
);

if (parts.has("drain")) {
  console.log(`\n## drain: batch ${BATCH}, 1 KiB payloads, median of ${runs} runs\n`);
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
}
if (parts.has("trap")) for (const batchSize of trapBatches) await trap(batchSize);
if (parts.has("steady")) await steady();
await pool.end();
