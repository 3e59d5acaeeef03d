// Recipe: enqueue inside a Sequelize transaction (mysql dialect on mysql2). Runnable: this file is a test.
import { DataTypes, Sequelize } from "sequelize";
import { afterAll, beforeAll, expect, it } from "vitest";
import { createMySqlStore, fromSequelize, migrate } from "../../src/index.js";
import { createPool, freshTable, mysqlUrl } from "../helpers.js";

const table = freshTable("sequelize");
const sequelize = new Sequelize(mysqlUrl, { dialect: "mysql", logging: false });
const Order = sequelize.define(
  "Order",
  { total: { type: DataTypes.INTEGER, allowNull: false } },
  {
    tableName: `${table}_orders`,
    timestamps: false,
  },
);
const pool = createPool({ connectionLimit: 4 });
const store = createMySqlStore({ pool, table });

beforeAll(async () => {
  await migrate(pool, { table });
  await Order.sync();
});
afterAll(async () => {
  await store.close();
  await pool.query(`DROP TABLE IF EXISTS \`${table}\`, \`${table}_fence\`, \`${table}_orders\``);
  await pool.end();
  await sequelize.close();
});

it("commits the order and its outbox entries together, or neither (managed transactions)", async () => {
  const ids = await sequelize.transaction(async (t) => {
    const order = await Order.create({ total: 42 }, { transaction: t });
    return store.enqueue(fromSequelize(sequelize, t), [
      { topic: "orders", key: `order-${order.get("id")}`, payload: new Uint8Array([0, 1, 2, 0, 255]) },
      { topic: "orders", key: `order-${order.get("id")}`, payload: "it's ? paid", headers: { q: "'?'" } },
    ]);
  });
  await expect(
    sequelize.transaction(async (t) => {
      await Order.create({ total: 7 }, { transaction: t });
      await store.enqueue(fromSequelize(sequelize, t), { topic: "orders", payload: "never" });
      throw new Error("payment declined");
    }),
  ).rejects.toThrow("payment declined");
  const entries = await store.claim({ claimer: "relay", limit: 10, leaseMs: 30_000 });
  expect(entries.map((e) => e.id)).toEqual(ids);
  expect([...(entries[0]?.payload ?? [])]).toEqual([0, 1, 2, 0, 255]);
  expect(entries[1]?.headers).toEqual({ q: "'?'" });
  expect(await Order.count()).toBe(1);
});
