// The dashboard in chromium on the real MySQL/MariaDB store (scripts/services.sh's MariaDB; and
// the real Kafka broker for the requeue-then-publish test): the shared body is in dashboard-browser.ts.
import type { OutboxStore } from "@outbox/core";
import { createMySqlStore, migrate } from "@outbox/store-mysql";
import mysql from "mysql2/promise";
import { dashboardBrowserSuite } from "./dashboard-browser.js";

const mysqlUrl = process.env.OUTBOX_MYSQL_URL ?? "mysql://outbox:outbox@127.0.0.1:3306/outbox_test";
/** The store's status column: 0 pending, 1 published, 2 dead. */
const statuses = ["pending", "published", "dead"];

let pool: mysql.Pool;
let table: string;

dashboardBrowserSuite({
  name: "MySQL/MariaDB",
  async setup() {
    pool = mysql.createPool({ uri: mysqlUrl, connectionLimit: 10 });
    table = `dash_${crypto.randomUUID().replaceAll("-", "").slice(0, 12)}`;
    await migrate(pool, { table });
  },
  store: () => createMySqlStore({ pool, table }) as unknown as OutboxStore<never>,
  async enqueue(store, messages) {
    const connection = await pool.getConnection();
    try {
      await connection.query("START TRANSACTION");
      const ids = await (store as unknown as OutboxStore<mysql.PoolConnection>).enqueue(connection, messages);
      await connection.query("COMMIT");
      return ids;
    } catch (error) {
      await connection.query("ROLLBACK").catch(() => undefined);
      throw error;
    } finally {
      connection.release();
    }
  },
  async row(id) {
    const [rows] = await pool.query<mysql.RowDataPacket[]>(`SELECT status, attempts FROM \`${table}\` WHERE id = ?`, [
      id,
    ]);
    const row = rows[0];
    return row === undefined
      ? undefined
      : { status: statuses[Number(row.status)] ?? String(row.status), attempts: Number(row.attempts) };
  },
  async teardown() {
    if (table) await pool.query(`DROP TABLE IF EXISTS \`${table}\`, \`${table}_fence\``);
    await pool?.end();
  },
});
