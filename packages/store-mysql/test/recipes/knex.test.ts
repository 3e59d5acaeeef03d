// Recipe: enqueue inside a Knex transaction (mysql2 client). Runnable: this file is a test.
import knexFactory from "knex";
import { afterAll, beforeAll, expect, it } from "vitest";
import { createMySqlStore, fromKnex, migrate } from "../../src/index.js";
import { createPool, freshTable, mysqlUrl } from "../helpers.js";

const knex = knexFactory({ client: "mysql2", connection: mysqlUrl, pool: { min: 0, max: 4 } });
// The relay side of the store gets its own mysql2/promise pool (Knex keeps its pool to itself).
const pool = createPool({ connectionLimit: 4 });
const table = freshTable("knex");
const orders = `${table}_orders`;
const store = createMySqlStore({ pool, table });

beforeAll(async () => {
  await migrate(pool, { table });
  await knex.schema.createTable(orders, (t) => {
    t.increments("id");
    t.integer("total").notNullable();
  });
});
afterAll(async () => {
  await store.close();
  await pool.query(`DROP TABLE IF EXISTS \`${table}\`, \`${table}_fence\`, \`${orders}\``);
  await pool.end();
  await knex.destroy();
});

it("commits the order and its outbox entries together", async () => {
  const ids = await knex.transaction(async (trx) => {
    const [orderId] = await trx(orders).insert({ total: 42 });
    return store.enqueue(fromKnex(trx), [
      { topic: "orders", key: `order-${orderId}`, payload: "placed", headers: { 'with "quotes"': "a\\b,{c}?" } },
      { topic: "orders", key: `order-${orderId}`, payload: "paid", idempotencyKey: "pay-1" },
    ]);
  });
  const entries = await store.claim({ claimer: "relay", limit: 10, leaseMs: 30_000 });
  expect(entries.map((e) => e.id)).toEqual(ids);
  expect(entries[0]?.headers).toEqual({ 'with "quotes"': "a\\b,{c}?" });
});

it("rolls back both when the transaction fails", async () => {
  await expect(
    knex.transaction(async (trx) => {
      await trx(orders).insert({ total: 7 });
      await store.enqueue(fromKnex(trx), { topic: "orders", payload: "never" });
      throw new Error("payment declined");
    }),
  ).rejects.toThrow("payment declined");
  expect(await knex(orders).count({ n: "*" })).toEqual([{ n: 1 }]);
  expect((await store.stats()).pending).toBe(2);
});
