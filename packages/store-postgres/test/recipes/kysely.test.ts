// Recipe: enqueue inside a Kysely transaction (pg dialect). Runnable: this file is a test.
import { CompiledQuery, type Generated, Kysely, PostgresDialect } from "kysely";
import { afterAll, beforeAll, expect, it } from "vitest";
import { createPostgresStore, fromKysely, migrate } from "../../src/index.js";
import { createPool, freshSchema } from "../helpers.js";

interface Database {
  orders: { id: Generated<number>; total: number };
}

const pool = createPool({ max: 4 });
const schema = freshSchema("kysely");
const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) }).withSchema(schema);
const store = createPostgresStore({ pool, schema });

beforeAll(async () => {
  await migrate(pool, { schema });
  await pool.query(`CREATE TABLE "${schema}".orders (id serial PRIMARY KEY, total int NOT NULL)`);
});
afterAll(async () => {
  await store.close();
  await pool.query(`DROP SCHEMA "${schema}" CASCADE`);
  await db.destroy(); // ends the pool
});

it("commits the order and its outbox entry together", async () => {
  const ids = await db.transaction().execute(async (trx) => {
    const order = await trx.insertInto("orders").values({ total: 42 }).returning("id").executeTakeFirstOrThrow();
    return store.enqueue(fromKysely(trx, CompiledQuery), {
      topic: "orders",
      key: `order-${order.id}`,
      payload: JSON.stringify({ type: "OrderPlaced", id: order.id, total: 42 }),
    });
  });
  const [entry] = await store.claim({ claimer: "relay", limit: 10, leaseMs: 30_000 });
  expect(entry?.id).toBe(ids[0]);
  expect(entry?.key).toBe("order-1");
});

it("rolls back both when the transaction fails", async () => {
  await expect(
    db.transaction().execute(async (trx) => {
      await trx.insertInto("orders").values({ total: 7 }).execute();
      await store.enqueue(fromKysely(trx, CompiledQuery), { topic: "orders", payload: "never" });
      throw new Error("payment declined");
    }),
  ).rejects.toThrow("payment declined");
  const orders = await db.selectFrom("orders").selectAll().execute();
  expect(orders).toHaveLength(1);
  expect((await store.stats()).pending).toBe(1);
});
