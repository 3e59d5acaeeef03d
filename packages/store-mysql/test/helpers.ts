import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import type { StoreHarness } from "@outbox/conformance";
import type { ManualClock } from "@outbox/core";
import { waitFor } from "@outbox/test-support/wait";
import mysql from "mysql2/promise";
import { createMySqlStore, type MySqlQueryable, type MySqlStoreOptions, migrate } from "../src/index.js";

/** scripts/services.sh's MariaDB 10.11 (vitest loads scripts/services.env). */
export const mysqlUrl = process.env.OUTBOX_MYSQL_URL ?? "mysql://outbox:outbox@127.0.0.1:3306/outbox_test";

export { waitFor };

/** A fresh table name per test (lowercase letters, digits, `_`). */
export function freshTable(prefix = "t"): string {
  return `${prefix}_${globalThis.crypto.randomUUID().replaceAll("-", "").slice(0, 12)}`;
}

export type Pool = mysql.Pool;

/** A mysql2/promise pool on the test server; `threadIds` collects its connections' ids (for KILL). */
export function createPool(options: mysql.PoolOptions = {}): mysql.Pool & { threadIds: Set<number> } {
  const pool = mysql.createPool({ uri: mysqlUrl, connectionLimit: 10, ...options }) as mysql.Pool & {
    threadIds: Set<number>;
  };
  pool.threadIds = new Set();
  pool.pool.on("connection", (connection: { threadId: number }) => pool.threadIds.add(connection.threadId));
  return pool;
}

/** Runs `work` in START TRANSACTION/COMMIT on one pooled connection (ROLLBACK when it throws). */
export async function inTransaction<T>(pool: mysql.Pool, work: (tx: mysql.PoolConnection) => Promise<T>): Promise<T> {
  const conn = await pool.getConnection();
  try {
    await conn.query("START TRANSACTION");
    const result = await work(conn);
    await conn.query("COMMIT");
    return result;
  } catch (error) {
    await conn.query("ROLLBACK").catch(() => undefined);
    throw error;
  } finally {
    conn.release();
  }
}

/**
 * A store on a fresh table of the real server, for the conformance kit. `transaction` is the
 * store's own `transaction()` (which wakes local relays after commit) unless `plainTransactions`.
 */
export async function mysqlHarness(
  clock: ManualClock,
  pool: mysql.Pool,
  options: Partial<MySqlStoreOptions> & { plainTransactions?: boolean } = {},
): Promise<StoreHarness<MySqlQueryable>> {
  const table = freshTable();
  await migrate(pool, { table });
  const { plainTransactions, ...storeOptions } = options;
  const store = createMySqlStore({ pool, table, clock, onError: () => undefined, ...storeOptions });
  const peers: Array<{ close(): Promise<void> }> = [];
  return {
    store,
    clock,
    transaction: (work) => (plainTransactions ? inTransaction(pool, work) : store.transaction(work)),
    // Another relay's store: a second instance on the same table (its own in-process state).
    async peer() {
      const peer = createMySqlStore({ pool, table, clock, onError: () => undefined, ...storeOptions });
      peers.push(peer);
      return peer;
    },
    async teardown() {
      await Promise.all(peers.map((peer) => peer.close()));
      await store.close();
      await pool.query(`DROP TABLE IF EXISTS \`${table}\`, \`${table}_fence\``);
    },
  };
}

/** KILL CONNECTION for each of `ids` that still exists; returns how many were killed. */
export async function killConnections(admin: mysql.Pool, ids: Iterable<number>): Promise<number> {
  let killed = 0;
  for (const id of ids) {
    try {
      await admin.query(`KILL CONNECTION ${Number(id)}`);
      killed += 1;
    } catch {
      // already gone
    }
  }
  return killed;
}

const servicesScript = fileURLToPath(new URL("../../../scripts/services.sh", import.meta.url));

/** Restarts MariaDB with scripts/services.sh and waits until it accepts logins again. */
export async function restartMariaDb(): Promise<void> {
  await promisify(execFile)("bash", [servicesScript, "restart", "mariadb"], { timeout: 180_000 });
  await waitFor(
    async () => {
      const conn = await mysql.createConnection({ uri: mysqlUrl, connectTimeout: 1_000 });
      try {
        await conn.query("SELECT 1");
        return true;
      } finally {
        await conn.end().catch(() => undefined);
      }
    },
    60_000,
    "MariaDB to accept connections after a restart",
  );
}
