// Recipe: enqueue inside a Drizzle transaction, on node-postgres and on PGlite. Runnable: this file is a test.
import { PGlite } from "@electric-sql/pglite";
import { sql } from "drizzle-orm";
import { drizzle as drizzlePg } from "drizzle-orm/node-postgres";
import { integer, pgSchema, serial } from "drizzle-orm/pg-core";
import { drizzle as drizzlePglite } from "drizzle-orm/pglite";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createPostgresStore, fromDrizzle, migrate } from "../../src/index.js";
import { createPool, freshSchema } from "../helpers.js";

const schemaName = freshSchema("drizzle");
const app = pgSchema(schemaName);
const orders = app.table("orders", { id: serial("id").primaryKey(), total: integer("total").notNull() });
const createOrders = `CREATE TABLE "${schemaName}".orders (id serial PRIMARY KEY, total int NOT NULL)`;

describe("node-postgres", () => {
  const pool = createPool({ max: 4 });
  const db = drizzlePg(pool);
  const store = createPostgresStore({ pool, schema: schemaName });
  beforeAll(async () => {
    await migrate(pool, { schema: schemaName });
    await pool.query(createOrders);
  });
  afterAll(async () => {
    await store.close();
    await pool.query(`DROP SCHEMA "${schemaName}" CASCADE`);
    await pool.end();
  });

  it("commits the order and its outbox entry together, or neither", async () => {
    const ids = await db.transaction(async (tx) => {
      const [order] = await tx.insert(orders).values({ total: 42 }).returning({ id: orders.id });
      return store.enqueue(fromDrizzle(tx, sql), { topic: "orders", key: `order-${order?.id}`, payload: "placed" });
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
    expect(await db.select().from(orders)).toHaveLength(1);
  });
});

describe("PGlite", () => {
  let client: PGlite;
  beforeAll(async () => {
    client = await PGlite.create();
    await migrate(client, { schema: schemaName });
    await client.exec(createOrders);
  });
  afterAll(() => client.close());

  it("commits the order and its outbox entry together", async () => {
    const db = drizzlePglite(client);
    const store = createPostgresStore({ db: client, schema: schemaName });
    const ids = await db.transaction(async (tx) => {
      const [order] = await tx.insert(orders).values({ total: 42 }).returning({ id: orders.id });
      return store.enqueue(fromDrizzle(tx, sql), { topic: "orders", key: `order-${order?.id}`, payload: "placed" });
    });
    const entries = await store.claim({ claimer: "relay", limit: 10, leaseMs: 30_000 });
    expect(entries.map((e) => e.id)).toEqual(ids);
    await store.close();
  });
});
