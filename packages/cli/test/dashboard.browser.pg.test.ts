// The dashboard in chromium on the real PostgreSQL store (and the real Kafka broker for the
// requeue-then-publish test): the shared body is in dashboard-browser.ts.
import type { OutboxStore } from "@outbox/core";
import { createPostgresStore, migrate } from "@outbox/store-postgres";
import { freshIdentifier, inTransaction, pgUrl } from "@outbox/test-support/postgres";
import pg from "pg";
import { dashboardBrowserSuite } from "./dashboard-browser.js";

let pool: pg.Pool;
let table: string;

dashboardBrowserSuite({
  name: "PostgreSQL",
  async setup() {
    pool = new pg.Pool({ connectionString: pgUrl });
    table = freshIdentifier("dash");
    await migrate(pool, { table });
  },
  store: () => createPostgresStore({ pool, table, listen: false }) as unknown as OutboxStore<never>,
  enqueue: (store, messages) =>
    inTransaction(pool, (tx) => (store as unknown as OutboxStore<pg.PoolClient>).enqueue(tx, messages)),
  async row(id) {
    const { rows } = await pool.query(`SELECT status, attempts FROM "${table}" WHERE id = $1`, [id]);
    return rows[0] as { status: string; attempts: number } | undefined;
  },
  async teardown() {
    if (table) await pool.query(`DROP TABLE IF EXISTS "${table}", "${table}_fence"`);
    await pool?.end();
  },
});
