import type { PGlite } from "@electric-sql/pglite";
import type { StoreHarness } from "@outbox/conformance";
import type { ManualClock } from "@outbox/core";
import { freshIdentifier, inTransaction } from "@outbox/test-support/postgres";
import { pgUrl } from "@outbox/test-support/services";
import pg from "pg";
import { createPostgresStore, migrate, type PostgresStoreOptions, type Queryable } from "../src/index.js";

export { pgUrl };

export const freshSchema = freshIdentifier;

export function createPool(options: pg.PoolConfig = {}): pg.Pool {
  const pool = new pg.Pool({ connectionString: pgUrl, max: 10, ...options });
  // Tests that kill connections on purpose make idle clients error out.
  pool.on("error", () => undefined);
  return pool;
}

export { inTransaction };

/** A store on a fresh schema of the real server, for the conformance kit. */
export async function pgHarness(
  clock: ManualClock,
  pool: pg.Pool,
  options: Partial<PostgresStoreOptions> = {},
): Promise<StoreHarness<Queryable>> {
  const schema = freshSchema();
  await migrate(pool, { schema });
  const store = createPostgresStore({ pool, schema, clock, onError: () => undefined, ...options });
  const peers: Array<{ close(): Promise<void> }> = [];
  return {
    store,
    clock,
    transaction: (work) => inTransaction(pool, work),
    // Another relay's store: a second instance on the same schema (its own in-process state).
    async peer() {
      const peer = createPostgresStore({ pool, schema, clock, onError: () => undefined, ...options, listen: false });
      peers.push(peer);
      return peer;
    },
    async teardown() {
      await Promise.all(peers.map((peer) => peer.close()));
      await store.close();
      await pool.query(`DROP SCHEMA "${schema}" CASCADE`);
    },
  };
}

/** A store on a fresh schema of a shared PGlite instance. */
export async function pgliteHarness(
  clock: ManualClock,
  db: PGlite,
  options: Partial<PostgresStoreOptions> = {},
): Promise<StoreHarness<Queryable>> {
  const schema = freshSchema();
  await migrate(db, { schema });
  const store = createPostgresStore({ db, schema, clock, onError: () => undefined, ...options });
  return {
    store,
    clock,
    transaction: (work) => db.transaction((tx) => work(tx)),
    async teardown() {
      await store.close();
      await db.exec(`DROP SCHEMA "${schema}" CASCADE`);
    },
  };
}

export { restartPostgres } from "@outbox/test-support/postgres";
export { waitFor } from "@outbox/test-support/wait";

/** Terminates the server backends whose application_name is `name` (and whose query matches). */
export async function terminateBackends(admin: pg.Pool, name: string, queryLike = "%"): Promise<number> {
  const { rows } = await admin.query(
    `SELECT count(pg_terminate_backend(pid))::int AS n FROM pg_stat_activity
     WHERE application_name = $1 AND query LIKE $2 AND pid <> pg_backend_pid()`,
    [name, queryLike],
  );
  return (rows[0] as { n: number }).n;
}
