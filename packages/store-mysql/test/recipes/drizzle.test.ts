// Recipe: enqueue inside a Drizzle transaction (mysql2). Runnable: this file is a test.
import { sql } from "drizzle-orm";
import { int, mysqlTable, serial } from "drizzle-orm/mysql-core";
import { drizzle } from "drizzle-orm/mysql2";
import { afterAll, beforeAll, expect, it } from "vitest";
import { createMySqlStore, fromDrizzle, migrate } from "../../src/index.js";
import { createPool, freshTable } from "../helpers.js";

const table = freshTable("drizzle");
const orders = mysqlTable(`${table}_orders`, { id: serial("id").primaryKey(), total: int("total").notNull() });
const pool = createPool({ connectionLimit: 4 });
const db = drizzle(pool);
const store = createMySqlStore({ pool, table });

beforeAll(async () => {
  await migrate(pool, { table });
  await pool.query(`CREATE TABLE \`${table}_orders\` (id SERIAL PRIMARY KEY, total INT NOT NULL)`);
});
afterAll(async () => {
  await store.close();
  await pool.query(`DROP TABLE IF EXISTS \`${table}\`, \`${table}_fence\`, \`${table}_orders\``);
  await pool.end();
});

it("commits the order and its outbox entries together, or neither", async () => {
  const ids = await db.transaction(async (tx) => {
    const [order] = await tx.insert(orders).values({ total: 42 }).$returningId();
    return store.enqueue(fromDrizzle(tx, sql), [
      { topic: "orders", key: `order-${order?.id}`, payload: "placed", headers: { "content-type": "text/plain" } },
      { topic: "orders", key: `order-${order?.id}`, payload: "paid" },
    ]);
  });
  await expect(
    db.transaction(async (tx) => {
      await tx.insert(orders).values({ total: 7 });
      await store.enqueue(fromDrizzle(tx, sql), { topic: "orders", payload: "never" });
      throw new Error("payment declined");
    }),
  ).rejects.toThrow("payment declined");
  const entries = await store.claim({ claimer: "relay", limit: 10, leaseMs: 30_000 });
  expect(entries.map((e) => e.id)).toEqual(ids);
  expect(entries[0]?.headers).toEqual({ "content-type": "text/plain" });
  expect(await db.select().from(orders)).toHaveLength(1);
});
