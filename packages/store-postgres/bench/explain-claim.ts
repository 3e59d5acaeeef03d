// The plan one claim runs with, and the buffers it touches, in the stale-statistics state of
// bench/stale-stats.ts (the planner expects no pending entry; 70,000 are; a frozen relay holds the
// heads of half the keys). Every step should be a LIMITed index scan, a sort or a ctid lookup.
//   node --conditions=@outbox/source --experimental-strip-types --import ../../scripts/register-ts.mjs bench/explain-claim.ts
// Environment: OUTBOX_PG_URL, LIMIT (claim size, default 32).
import { createPostgresStore, migrate, type Queryable } from "@outbox/store-postgres";
import pg from "pg";
import { claimSql } from "../src/claim.js";
import { resolveNames } from "../src/schema.js";
import { inTransaction } from "./support.js";

const url = process.env.OUTBOX_PG_URL ?? "postgres://postgres:postgres@127.0.0.1:5432/outbox_test";
const pool = new pg.Pool({ connectionString: url, max: 4 });
const schema = `exp_${globalThis.crypto.randomUUID().replaceAll("-", "").slice(0, 10)}`;
const table = `"${schema}".outbox`;
const payload = new Uint8Array(1024);
const entries = (count: number, offset: number) =>
  Array.from({ length: count }, (_, i) => ({ topic: "bench", key: `key-${(offset + i) % 1000}`, payload }));
await migrate(pool, { schema });
await pool.query(`ALTER TABLE ${table} SET (autovacuum_enabled = false)`);
const setup = createPostgresStore({ pool, schema, listen: false });
for (let done = 0; done < 20_000; done += 1_000)
  await inTransaction(pool, (tx: Queryable) => setup.enqueue(tx, entries(1_000, done)));
await pool.query(`UPDATE ${table} SET status = 'published', settled_at = now()`);
await pool.query(`ANALYZE ${table}`);
for (let done = 0; done < 70_000; done += 1_000)
  await inTransaction(pool, (tx: Queryable) => setup.enqueue(tx, entries(1_000, done)));
await setup.claim({ claimer: "frozen", limit: 500, leaseMs: 3_600_000 });
const limit = Number(process.env.LIMIT ?? 32);
const sql = claimSql(resolveNames({ schema }), limit, false);
const now = new Date().toISOString();
const client = await pool.connect();
await client.query("SET jit = off");
for (let i = 0; i < 3; i++) {
  const { rows } = await client.query(`EXPLAIN (ANALYZE, BUFFERS) ${sql}`, [now, now, "x", "", "0"]);
  if (i === 2 || process.env.ALL) console.log(rows.map((r) => r["QUERY PLAN"]).join("\n"));
}
client.release();
await pool.query(`DROP SCHEMA "${schema}" CASCADE`);
await pool.end();
