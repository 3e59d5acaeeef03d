import type { PGlite } from "@electric-sql/pglite";
import type { InboxStoreHarness } from "@outbox/conformance/inbox";
import type { ManualClock } from "@outbox/core";
import type pg from "pg";
import { createPostgresInboxStore, migrateInbox, type Queryable } from "../src/index.js";
import { freshSchema } from "./helpers.js";

/** The effects table the kit's handlers write to, in the handler's transaction. */
const effectsSql = (schema: string) => `CREATE TABLE "${schema}".effects (name text NOT NULL)`;

function effectHarness(db: Queryable, schema: string) {
  return {
    effect: async (tx: Queryable, name: string) => {
      await tx.query(`INSERT INTO "${schema}".effects (name) VALUES ($1)`, [name]);
    },
    countEffects: async (name: string) => {
      const { rows } = await db.query(`SELECT count(*)::int AS n FROM "${schema}".effects WHERE name = $1`, [name]);
      return Number((rows[0] as { n: number }).n);
    },
  };
}

/** An inbox store on a fresh schema of the real server; `peer` is a second store on its own pool. */
export async function pgInboxHarness(
  clock: ManualClock,
  pool: pg.Pool,
  peerPool: pg.Pool,
): Promise<InboxStoreHarness<Queryable>> {
  const schema = freshSchema();
  await migrateInbox(pool, { schema });
  await pool.query(effectsSql(schema));
  const store = createPostgresInboxStore({ pool, schema, clock });
  return {
    store,
    clock,
    ...effectHarness(pool, schema),
    peer: async () => createPostgresInboxStore({ pool: peerPool, schema, clock }),
    async teardown() {
      await store.close();
      await pool.query(`DROP SCHEMA "${schema}" CASCADE`);
    },
  };
}

/** An inbox store on a fresh schema of a shared PGlite instance. */
export async function pgliteInboxHarness(clock: ManualClock, db: PGlite): Promise<InboxStoreHarness<Queryable>> {
  const schema = freshSchema();
  await migrateInbox(db, { schema });
  await db.exec(effectsSql(schema));
  const store = createPostgresInboxStore({ db, schema, clock });
  return {
    store,
    clock,
    ...effectHarness(db, schema),
    async teardown() {
      await store.close();
      await db.exec(`DROP SCHEMA "${schema}" CASCADE`);
    },
  };
}
