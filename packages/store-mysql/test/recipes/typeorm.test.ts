// Recipe: enqueue inside a TypeORM transaction (mysql2 driver, no decorators). Runnable: this file is a test.
import { DataSource, EntitySchema } from "typeorm";
import { afterAll, beforeAll, expect, it } from "vitest";
import { createMySqlStore, fromTypeORM, migrate } from "../../src/index.js";
import { createPool, freshTable, mysqlUrl } from "../helpers.js";

const table = freshTable("typeorm");
interface Order {
  id: number;
  total: number;
}
const OrderEntity = new EntitySchema<Order>({
  name: "Order",
  tableName: `${table}_orders`,
  columns: { id: { type: Number, primary: true, generated: true }, total: { type: Number } },
});
// TypeORM's default connection charset is utf8mb3: the store's statements do not depend on it.
const dataSource = new DataSource({ type: "mysql", url: mysqlUrl, entities: [OrderEntity], synchronize: false });
const pool = createPool({ connectionLimit: 4 });
const store = createMySqlStore({ pool, table });

beforeAll(async () => {
  await dataSource.initialize();
  await migrate(pool, { table });
  await pool.query(`CREATE TABLE \`${table}_orders\` (id INT AUTO_INCREMENT PRIMARY KEY, total INT NOT NULL)`);
});
afterAll(async () => {
  await store.close();
  await pool.query(`DROP TABLE IF EXISTS \`${table}\`, \`${table}_fence\`, \`${table}_orders\``);
  await pool.end();
  await dataSource.destroy();
});

it("commits the order and its outbox entries together, or neither", async () => {
  const ids = await dataSource.transaction(async (manager) => {
    const order = await manager.getRepository(OrderEntity).save({ total: 42 });
    return store.enqueue(fromTypeORM(manager), [
      { topic: "orders", key: `order-${order.id}-🚀`, payload: "placed", headers: { emoji: "🧪" } },
      { topic: "orders", key: `order-${order.id}-🚀`, payload: "paid" },
    ]);
  });
  await expect(
    dataSource.transaction(async (manager) => {
      await manager.getRepository(OrderEntity).save({ total: 7 });
      await store.enqueue(fromTypeORM(manager), { topic: "orders", payload: "never" });
      throw new Error("payment declined");
    }),
  ).rejects.toThrow("payment declined");
  const entries = await store.claim({ claimer: "relay", limit: 10, leaseMs: 30_000 });
  expect(entries.map((e) => e.id)).toEqual(ids);
  expect(entries[0]?.key).toBe("order-1-🚀");
  expect(entries[0]?.headers).toEqual({ emoji: "🧪" });
  expect(await dataSource.getRepository(OrderEntity).count()).toBe(1);
});
