// Recipe: enqueue inside a Knex transaction (pg client). Runnable: this file is a test.
import knexFactory from "knex";
import { afterAll, beforeAll, expect, it } from "vitest";
import { createPostgresStore, fromKnex, migrate } from "../../src/index.js";
import { createPool, freshSchema, pgUrl } from "../helpers.js";

const knex = knexFactory({ client: "pg", connection: pgUrl, pool: { min: 0, max: 4 } });
// The relay side of the store gets its own pg Pool (Knex keeps its pool to itself).
const pool = createPool({ max: 4 });
const schema = freshSchema("knex");
const store = createPostgresStore({ pool, schema });

beforeAll(async () => {
  await migrate(pool, { schema });
  await knex.schema.withSchema(schema).createTable("orders", (table) => {
    table.increments("id");
    table.integer("total").notNullable();
  });
});
afterAll(async () => {
  await store.close();
  await pool.query(`DROP SCHEMA "${schema}" CASCADE`);
  await pool.end();
  await knex.destroy();
});

it("commits the order and its outbox entries together", async () => {
  const ids = await knex.transaction(async (trx) => {
    const [order] = await trx.withSchema(schema).table("orders").insert({ total: 42 }).returning("id");
    return store.enqueue(fromKnex(trx), [
      { topic: "orders", key: `order-${order.id}`, payload: "placed", headers: { 'with "quotes"': "a\\b,{c}" } },
      { topic: "orders", key: `order-${order.id}`, payload: "paid", idempotencyKey: "pay-1" },
    ]);
  });
  const entries = await store.claim({ claimer: "relay", limit: 10, leaseMs: 30_000 });
  // Both entries share a key: one claim returns them as a run, in order.
  expect(entries.map((e) => e.id)).toEqual(ids);
  expect(entries[0]?.headers).toEqual({ 'with "quotes"': "a\\b,{c}" });
});

it("rolls back both when the transaction fails", async () => {
  await expect(
    knex.transaction(async (trx) => {
      await trx.withSchema(schema).table("orders").insert({ total: 7 });
      await store.enqueue(fromKnex(trx), { topic: "orders", payload: "never" });
      throw new Error("payment declined");
    }),
  ).rejects.toThrow("payment declined");
  expect(await knex.withSchema(schema).table("orders").count({ n: "*" })).toEqual([{ n: "1" }]);
  expect((await store.stats()).pending).toBe(2);
});
