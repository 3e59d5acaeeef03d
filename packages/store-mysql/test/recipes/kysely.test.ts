// Recipe: enqueue inside a Kysely transaction (MySQL dialect on mysql2). Runnable: this file is a test.
import { CompiledQuery, type Generated, Kysely, MysqlDialect } from "kysely";
import { createPool as createCallbackPool } from "mysql2";
import { afterAll, beforeAll, expect, it } from "vitest";
import { createMySqlStore, fromKysely, migrate } from "../../src/index.js";
import { createPool, freshTable, mysqlUrl } from "../helpers.js";

interface Database {
  orders: { id: Generated<number>; total: number };
}

const table = freshTable("kysely");
const orders = `${table}_orders`;
// Kysely's MySQL dialect takes mysql2's callback pool; the store takes a mysql2/promise pool.
const db = new Kysely<{ [orders]: Database["orders"] }>({
  dialect: new MysqlDialect({ pool: createCallbackPool({ uri: mysqlUrl, connectionLimit: 4 }) }),
});
const pool = createPool({ connectionLimit: 4 });
const store = createMySqlStore({ pool, table });

beforeAll(async () => {
  await migrate(pool, { table });
  await pool.query(`CREATE TABLE \`${orders}\` (id INT AUTO_INCREMENT PRIMARY KEY, total INT NOT NULL)`);
});
afterAll(async () => {
  await store.close();
  await pool.query(`DROP TABLE IF EXISTS \`${table}\`, \`${table}_fence\`, \`${orders}\``);
  await pool.end();
  await db.destroy();
});

it("commits the order and its outbox entries together", async () => {
  const ids = await db.transaction().execute(async (trx) => {
    const order = await trx.insertInto(orders).values({ total: 42 }).executeTakeFirstOrThrow();
    return store.enqueue(fromKysely(trx, CompiledQuery), [
      { topic: "orders", key: `order-${order.insertId}`, payload: JSON.stringify({ type: "OrderPlaced", total: 42 }) },
      { topic: "orders", key: `order-${order.insertId}`, payload: new Uint8Array([0, 255, 0]) },
    ]);
  });
  const entries = await store.claim({ claimer: "relay", limit: 10, leaseMs: 30_000 });
  expect(entries.map((e) => e.id)).toEqual(ids);
  expect(entries[0]?.key).toBe("order-1");
  expect([...(entries[1]?.payload ?? [])]).toEqual([0, 255, 0]);
});

it("rolls back both when the transaction fails", async () => {
  await expect(
    db.transaction().execute(async (trx) => {
      await trx.insertInto(orders).values({ total: 7 }).execute();
      await store.enqueue(fromKysely(trx, CompiledQuery), { topic: "orders", payload: "never" });
      throw new Error("payment declined");
    }),
  ).rejects.toThrow("payment declined");
  expect(await db.selectFrom(orders).selectAll().execute()).toHaveLength(1);
  expect((await store.stats()).pending).toBe(2);
});
