import { execFile } from "node:child_process";
import { promisify } from "node:util";
import pg from "pg";
import { pgUrl } from "./services.js";
import { waitFor } from "./wait.js";

export { pgUrl };

/** A fresh SQL identifier (lowercase letters, digits, `_`) for a per-test schema or table. */
export function freshIdentifier(prefix = "t"): string {
  return `${prefix}_${globalThis.crypto.randomUUID().replaceAll("-", "").slice(0, 12)}`;
}

/** True when a fresh connection can log in and run a query. */
async function acceptsLogins(): Promise<boolean> {
  const client = new pg.Client({ connectionString: pgUrl, connectionTimeoutMillis: 1_000 });
  client.on("error", () => undefined);
  try {
    await client.connect();
    await client.query("SELECT 1");
    return true;
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** Restarts the local PostgreSQL 15 cluster and waits until it accepts logins again. */
export async function restartPostgres(mode: "fast" | "immediate" = "fast"): Promise<void> {
  await promisify(execFile)("pg_ctlcluster", ["--skip-systemctl-redirect", "15", "main", "restart", "-m", mode]);
  await waitFor(acceptsLogins, 60_000, "PostgreSQL to accept connections after a restart");
}

/** Runs `work` in BEGIN/COMMIT on one pooled connection (ROLLBACK when it throws). */
export async function inTransaction<T>(pool: pg.Pool, work: (tx: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  try {
    await client.query("BEGIN");
    const result = await work(client);
    await client.query("COMMIT");
    return result;
  } catch (error) {
    await client.query("ROLLBACK").catch(() => undefined);
    throw error;
  } finally {
    client.release();
  }
}
