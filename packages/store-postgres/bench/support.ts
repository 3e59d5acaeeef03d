// What the store's benchmarks share: the machine line, transactions, percentiles.
import { execFileSync } from "node:child_process";
import { cpus, totalmem } from "node:os";
import type { Queryable } from "@outbox/store-postgres";
import type pg from "pg";

function cpuModel(): string {
  try {
    const out = execFileSync("lscpu", { encoding: "utf8" });
    return /Model name:\s*(.+)/.exec(out)?.[1]?.trim() ?? cpus()[0]?.model ?? "unknown";
  } catch {
    return cpus()[0]?.model ?? "unknown";
  }
}

/** The machine, Node and the server's durability settings, as every figure must be quoted with them. */
export async function describeMachine(pool: pg.Pool): Promise<string> {
  const settings = await pool.query(
    "SELECT current_setting('fsync') AS fsync, current_setting('synchronous_commit') AS sc, version() AS version",
  );
  const { fsync, sc, version } = settings.rows[0] as { fsync: string; sc: string; version: string };
  return [
    `Machine: ${cpuModel()}, ${cpus().length} cores, ${Math.round(totalmem() / 2 ** 30)} GiB; Node ${process.version}`,
    `PostgreSQL: ${version.split(" on ")[0]}, fsync=${fsync}, synchronous_commit=${sc}`,
    ...(fsync === "on" ? [] : ["WARNING: fsync is off: these figures are not from a durable setup"]),
  ].join("\n");
}

export async function inTransaction(pool: pg.Pool, work: (tx: Queryable) => Promise<unknown>): Promise<void> {
  const client = await pool.connect();
  try {
    await client.query("BEGIN");
    await work(client);
    await client.query("COMMIT");
  } catch (error) {
    await client.query("ROLLBACK").catch(() => undefined);
    throw error;
  } finally {
    client.release();
  }
}

export function percentiles(values: readonly number[]): { p50: number; p99: number; max: number } {
  const sorted = [...values].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? Number.NaN;
  return { p50: at(0.5), p99: at(0.99), max: sorted.at(-1) ?? Number.NaN };
}
