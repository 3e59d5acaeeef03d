import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { loadavg } from "node:os";
import type { OutboxStore } from "@outbox/core";
import { createMySqlStore, migrate as migrateMySql } from "@outbox/store-mysql";
import { createPostgresStore, migrate as migratePostgres } from "@outbox/store-postgres";
import { machineLine, percentiles } from "@outbox/test-support/bench";
import mysql from "mysql2/promise";
import pg from "pg";
import { createDashboardHandler } from "../src/index.js";

const pgUrl = process.env.OUTBOX_PG_URL ?? "postgres://postgres:postgres@127.0.0.1:5432/outbox_test";
const mysqlUrl = process.env.OUTBOX_MYSQL_URL ?? "mysql://outbox:outbox@127.0.0.1:3306/outbox_test";
const N = Number(process.env.OUTBOX_BENCH_ENTRIES ?? 1_000_000);
const requests = Number(process.env.OUTBOX_BENCH_REQUESTS ?? 20);
const stores = new Set((process.env.OUTBOX_BENCH_STORES ?? "postgres,mysql").split(","));
const autovacuumWaitS = Number(process.env.OUTBOX_BENCH_AUTOVACUUM_WAIT ?? 600);
// Keeps the filled schema or table (to EXPLAIN its queries); its name is printed.
const keep = process.env.OUTBOX_BENCH_KEEP === "1";
const WARM_UP = 3;
const PENDING = Math.round(N / 10);
const LEASED = Math.round(PENDING / 20);
const DEAD = Math.round(N / 100);
// Dead entries are spread over the settled ids: one every DEAD_EVERY.
const DEAD_EVERY = Math.floor((N - PENDING) / DEAD);
const KEYS = 1_500;
const now = Date.now();

// ---- the data, as SQL expressions of the row number g (shared by both dialects) -------------
const isPending = `g > ${N - PENDING}`;
const isLeased = `g > ${N - PENDING} AND g <= ${N - PENDING + LEASED}`;
const isRetryWaiting = `g > ${N - PENDING + LEASED} AND g % 20 = 0`;
const isDead = `g <= ${N - PENDING} AND g % ${DEAD_EVERY} = 0`;
const keyOf = (concat: (...parts: string[]) => string) => `CASE
    WHEN g % 25 = 1 THEN 'tenant-hot-1' WHEN g % 50 = 2 THEN 'tenant-hot-2' WHEN g % 100 = 3 THEN 'tenant-hot-3'
    WHEN g % 100 = 4 THEN NULL ELSE ${concat("'key-'", `g % ${KEYS}`)} END`;
const topicOf = `CASE g % 3 WHEN 0 THEN 'orders.created' WHEN 1 THEN 'payments.settled' ELSE 'users.updated' END`;
const payloadText = (concat: (...parts: string[]) => string) =>
  concat(`'{"orderId":'`, "g", `',"amount":'`, "g % 997", `',"note":"'`, `'${"x".repeat(120)}'`, `'"}'`);
const lastError = `'Error: broker refused the message (timeout after 30000 ms)'`;
// Entries are 100 ms apart; the newest was created a second ago.
const createdMs = `${now - 1_000} - (${N} - g) * 100`;

interface Timed {
  readonly route: string;
  readonly p50: number;
  readonly p99: number;
  readonly max: number;
  readonly bytes: number;
}

const load = () =>
  loadavg()
    .map((value) => value.toFixed(2))
    .join(", ");

async function serve(store: OutboxStore<never>): Promise<{ base: string; close: () => Promise<void> }> {
  const handler = createDashboardHandler({ store });
  const server: Server = createServer(handler);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    base: `http://127.0.0.1:${port}`,
    close: async () => {
      handler.close();
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** Every GET the page makes, in the order it makes them, plus the dead-letter actions' reads. */
function routes(deadIds: readonly string[]): Array<[label: string, path: string]> {
  const first = deadIds[0] as string;
  const middle = deadIds[Math.floor(deadIds.length / 2)] as string;
  // The detail finds an entry by scanning the oldest dead entries: the last one it can reach is the worst case.
  const deepest = deadIds[Math.min(deadIds.length, 10_000) - 1] as string;
  return [
    ["GET / (the page)", "/"],
    ["GET assets/uPlot.min.css", "/assets/uPlot.min.css"],
    ["GET assets/app.css", "/assets/app.css"],
    ["GET assets/uPlot.min.js", "/assets/uPlot.min.js"],
    ["GET assets/app.js", "/assets/app.js"],
    ["GET api/state", "/api/state"],
    ["GET api/dead?limit=50 (first page)", "/api/dead?limit=50"],
    [
      `GET api/dead?limit=50&after= (page ${Math.floor(deadIds.length / 100) + 1})`,
      `/api/dead?limit=50&after=${middle}`,
    ],
    ["GET api/dead/:id (oldest dead entry)", `/api/dead/${first}`],
    [
      `GET api/dead/:id (${Math.min(deadIds.length, 10_000).toLocaleString("en")}th dead entry)`,
      `/api/dead/${deepest}`,
    ],
    ["GET api/dead/:id/payload (oldest)", `/api/dead/${first}/payload`],
  ];
}

async function timeRoutes(base: string, deadIds: readonly string[]): Promise<Timed[]> {
  const results: Timed[] = [];
  for (const [route, path] of routes(deadIds)) {
    const times: number[] = [];
    let bytes = 0;
    for (let i = 0; i < WARM_UP + requests; i++) {
      const start = performance.now();
      const response = await fetch(`${base}${path}`);
      const body = await response.arrayBuffer();
      const ms = performance.now() - start;
      if (response.status !== 200) {
        throw new Error(`${path}: HTTP ${response.status} ${Buffer.from(body).toString("utf8").slice(0, 300)}`);
      }
      if (i >= WARM_UP) times.push(ms);
      bytes = body.byteLength;
    }
    results.push({ route, bytes, ...percentiles(times) });
  }
  return results;
}

async function measure(title: string, store: OutboxStore<never>, deadIds: readonly string[]): Promise<void> {
  const loadBefore = load();
  const { base, close } = await serve(store);
  try {
    const results = await timeRoutes(base, deadIds);
    console.log(`\n${title}`);
    console.log(`load average (1, 5, 15 min) before: ${loadBefore}; after: ${load()}`);
    printRows(results);
  } finally {
    await close();
  }
}

function printRows(results: readonly Timed[]): void {
  console.log("| request | p50 ms | p99 ms | max ms | bytes |");
  console.log("|---|---:|---:|---:|---:|");
  for (const r of results) {
    console.log(`| ${r.route} | ${r.p50.toFixed(1)} | ${r.p99.toFixed(1)} | ${r.max.toFixed(1)} | ${r.bytes} |`);
  }
  const over = results.filter((r) => r.max >= 200);
  console.log(over.length === 0 ? "every request under 200 ms" : `OVER 200 ms: ${over.map((r) => r.route).join("; ")}`);
}

// ---- PostgreSQL --------------------------------------------------------------------------------
async function postgres(): Promise<void> {
  const pool = new pg.Pool({ connectionString: pgUrl, max: 8 });
  pool.on("error", () => undefined);
  const schema = `bench_dash_${globalThis.crypto.randomUUID().replaceAll("-", "").slice(0, 8)}`;
  const t = `"${schema}".outbox`;
  const settings = await pool.query(
    "SELECT current_setting('fsync') AS fsync, current_setting('synchronous_commit') AS sc, " +
      "current_setting('shared_buffers') AS sb, version() AS version",
  );
  const { fsync, sc, sb, version } = settings.rows[0] as { fsync: string; sc: string; sb: string; version: string };
  console.log(
    `\nPostgreSQL: ${version.split(" on ")[0]}, fsync=${fsync}, synchronous_commit=${sc}, shared_buffers=${sb}`,
  );
  try {
    await migratePostgres(pool, { schema });
    const concat = (...parts: string[]) => parts.join(" || ");
    const ts = (ms: string) => `to_timestamp((${ms}) / 1000.0)`;
    const fillStart = performance.now();
    await pool.query(`INSERT INTO ${t} (id, topic, key, payload, headers, created_at, available_at, status, attempts,
        last_error, claimed_by, lease_until, settled_at)
      SELECT g, ${topicOf}, ${keyOf(concat)}, convert_to(${payloadText(concat)}, 'UTF8'), '{}',
        ${ts(createdMs)},
        CASE WHEN ${isRetryWaiting} THEN ${ts(`${now} + 600000`)} ELSE ${ts(createdMs)} END,
        CASE WHEN ${isPending} THEN 'pending' WHEN ${isDead} THEN 'dead' ELSE 'published' END,
        CASE WHEN ${isDead} THEN 10 WHEN ${isRetryWaiting} THEN 2 WHEN ${isLeased} OR NOT (${isPending}) THEN 1 ELSE 0 END,
        CASE WHEN ${isDead} OR ${isRetryWaiting} THEN ${lastError} END,
        CASE WHEN ${isLeased} THEN 'relay-0' END,
        CASE WHEN ${isLeased} THEN ${ts(`${now} + 300000`)} END,
        CASE WHEN NOT (${isPending}) THEN ${ts(`${createdMs} + 2000`)} END
      FROM generate_series(1, ${N}) AS g`);
    await pool.query(`SELECT setval(pg_get_serial_sequence('${t}', 'id'), ${N})`);
    const size = await pool.query(`SELECT pg_size_pretty(pg_total_relation_size('${t}')) AS size`);
    console.log(
      `filled ${N.toLocaleString("en")} entries in ${((performance.now() - fillStart) / 1000).toFixed(1)} s ` +
        `(table and indexes: ${size.rows[0].size}); no ANALYZE: statistics are autovacuum's`,
    );
    const dead = await pool.query(`SELECT id::text AS id FROM ${t} WHERE status = 'dead' ORDER BY id`);
    const deadIds = dead.rows.map((row: { id: string }) => row.id);
    const store = createPostgresStore({ pool, schema, listen: false });
    const check = await store.stats();
    console.log(
      `store.stats(): pending ${check.pending}, in flight ${check.inFlight}, dead ${check.dead}, ` +
        `oldest pending ${check.oldestPendingAt?.toISOString()}`,
    );
    const visited = async () =>
      (
        await pool.query(
          `SELECT last_autovacuum, last_autoanalyze FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = 'outbox'`,
          [schema],
        )
      ).rows[0] as { last_autovacuum: Date | null; last_autoanalyze: Date | null };
    const before = await visited();
    await measure(
      `PostgreSQL, right after the fill (autovacuum: ${before.last_autovacuum ? "done" : "not yet"}, ` +
        `autoanalyze: ${before.last_autoanalyze ? "done" : "not yet"})`,
      store as OutboxStore<never>,
      deadIds,
    );
    if (autovacuumWaitS > 0) {
      const deadline = Date.now() + autovacuumWaitS * 1000;
      let state = await visited();
      while ((!state.last_autovacuum || !state.last_autoanalyze) && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 2_000));
        state = await visited();
      }
      // Autovacuum may still be at work on the table's indexes: let it finish before timing.
      while (Date.now() < deadline) {
        const running = await pool.query(
          `SELECT count(*)::int AS n FROM pg_stat_progress_vacuum WHERE relid = '${t}'::regclass`,
        );
        if (running.rows[0].n === 0) break;
        await new Promise((resolve) => setTimeout(resolve, 1_000));
      }
      await measure(
        `PostgreSQL, after autovacuum (vacuumed ${state.last_autovacuum?.toISOString() ?? "not within the wait"}, ` +
          `analyzed ${state.last_autoanalyze?.toISOString() ?? "not within the wait"})`,
        store as OutboxStore<never>,
        deadIds,
      );
    }
    await store.close();
  } finally {
    if (keep) console.log(`kept schema ${schema}`);
    else await pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
    await pool.end();
  }
}

// ---- MariaDB / MySQL ---------------------------------------------------------------------------
async function mysqlStore(): Promise<void> {
  const pool = mysql.createPool({ uri: mysqlUrl, connectionLimit: 8 });
  const table = `bench_dash_${globalThis.crypto.randomUUID().replaceAll("-", "").slice(0, 8)}`;
  const [versionRows] = await pool.query<mysql.RowDataPacket[]>(
    "SELECT VERSION() AS version, @@innodb_buffer_pool_size AS bp, @@innodb_flush_log_at_trx_commit AS flush",
  );
  const info = versionRows[0] as { version: string; bp: number; flush: number };
  const isMariaDb = /mariadb/i.test(info.version);
  console.log(
    `\n${isMariaDb ? "MariaDB" : "MySQL"}: ${info.version}, innodb_buffer_pool_size=${Math.round(Number(info.bp) / 2 ** 20)} MiB, ` +
      `innodb_flush_log_at_trx_commit=${info.flush}`,
  );
  const t = `\`${table}\``;
  try {
    await migrateMySql(pool, { table });
    const concat = (...parts: string[]) => `CONCAT(${parts.join(", ")})`;
    // MariaDB's SEQUENCE engine; MySQL 8 has a recursive CTE instead.
    const series = isMariaDb
      ? `(SELECT seq AS g FROM seq_1_to_${N}) s`
      : `(WITH RECURSIVE n (g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM n WHERE g < ${N}) SELECT g FROM n) s`;
    const fillStart = performance.now();
    if (!isMariaDb) await pool.query(`SET SESSION cte_max_recursion_depth = ${N + 1}`);
    await pool.query(`INSERT INTO ${t} (id, topic, entry_key, key_hash, payload, headers, created_at, available_at,
        status, attempts, last_error, claimed_by, lease_until, settled_at)
      SELECT g, topic, k, IF(k IS NULL, NULL, UNHEX(LEFT(SHA2(k, 256), 32))), payload, '{}', created, available,
        status, attempts, last_error, claimed_by, lease_until, settled
      FROM (SELECT g, ${topicOf} AS topic, ${keyOf(concat)} AS k, CAST(${payloadText(concat)} AS BINARY) AS payload,
        ${createdMs} AS created,
        CASE WHEN ${isRetryWaiting} THEN ${now} + 600000 ELSE ${createdMs} END AS available,
        CASE WHEN ${isPending} THEN 0 WHEN ${isDead} THEN 2 ELSE 1 END AS status,
        CASE WHEN ${isDead} THEN 10 WHEN ${isRetryWaiting} THEN 2 WHEN ${isLeased} OR NOT (${isPending}) THEN 1 ELSE 0 END
          AS attempts,
        CASE WHEN ${isDead} OR ${isRetryWaiting} THEN ${lastError} END AS last_error,
        CASE WHEN ${isLeased} THEN 'relay-0' END AS claimed_by,
        CASE WHEN ${isLeased} THEN ${now} + 300000 END AS lease_until,
        CASE WHEN NOT (${isPending}) THEN ${createdMs} + 2000 END AS settled
        FROM ${series}) r`);
    const [sizeRows] = await pool.query<mysql.RowDataPacket[]>(
      `SELECT ROUND((data_length + index_length) / 1048576) AS mib FROM information_schema.tables
       WHERE table_schema = DATABASE() AND table_name = ?`,
      [table],
    );
    console.log(
      `filled ${N.toLocaleString("en")} entries in ${((performance.now() - fillStart) / 1000).toFixed(1)} s ` +
        `(table and indexes: about ${sizeRows[0]?.mib} MiB); no ANALYZE TABLE: statistics are InnoDB's own`,
    );
    const [dead] = await pool.query<mysql.RowDataPacket[]>(
      `SELECT CAST(id AS CHAR) AS id FROM ${t} WHERE status = 2 ORDER BY id`,
    );
    const deadIds = dead.map((row) => String(row.id));
    const store = createMySqlStore({ pool, table });
    const check = await store.stats();
    console.log(
      `store.stats(): pending ${check.pending}, in flight ${check.inFlight}, dead ${check.dead}, ` +
        `oldest pending ${check.oldestPendingAt?.toISOString()}`,
    );
    await measure(`${isMariaDb ? "MariaDB" : "MySQL"}, after the fill`, store as OutboxStore<never>, deadIds);
    await store.close();
  } finally {
    if (keep) console.log(`kept table ${table}`);
    else await pool.query(`DROP TABLE IF EXISTS ${t}, \`${table}_fence\``);
    await pool.end();
  }
}

console.log(machineLine());
console.log(`Date: ${new Date().toISOString()}; load average (1, 5, 15 min): ${load()}`);
console.log(
  `Outbox: ${N.toLocaleString("en")} entries: ${PENDING.toLocaleString("en")} pending (${LEASED.toLocaleString("en")} leased, ` +
    `about ${Math.round((PENDING - LEASED) / 20).toLocaleString("en")} waiting for a retry), ${DEAD.toLocaleString("en")} dead, ` +
    `the rest published; ${KEYS.toLocaleString("en")} keys + 3 hot ones; ${requests} timed requests per route after ${WARM_UP} warm-up ones`,
);
if (stores.has("postgres")) await postgres();
if (stores.has("mysql")) await mysqlStore();
