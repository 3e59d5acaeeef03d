// Recipe: enqueue inside a Prisma interactive transaction ($transaction + raw SQL), Prisma 7 with
// the MariaDB driver adapter (it serves MySQL too). Runnable: this file is a test (it runs
// `prisma generate` first).
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { PrismaMariaDb } from "@prisma/adapter-mariadb";
import { afterAll, beforeAll, expect, it } from "vitest";
import { createMySqlStore, fromPrisma, migrate, type PrismaLike } from "../../src/index.js";
import { createPool, freshTable, mysqlUrl } from "../helpers.js";

// The generated client's surface this recipe uses (the real types come from `prisma generate`).
interface Tx extends PrismaLike {
  order: { create(args: { data: { total: number } }): Promise<{ id: number }>; count(): Promise<number> };
}
interface Client extends Tx {
  $transaction<T>(work: (tx: Tx) => Promise<T>): Promise<T>;
  $disconnect(): Promise<void>;
}

const dir = fileURLToPath(new URL("./prisma/", import.meta.url));
const table = freshTable("prisma");
const pool = createPool({ connectionLimit: 2 });
const store = createMySqlStore({ pool, table });
let prisma: Client;

beforeAll(async () => {
  // Prisma 7 generates a TypeScript client with no query engine binary. The CLI still checks for
  // a schema engine it does not need for `generate`; pointing it at any executable lets
  // generation proceed offline.
  const prismaBin = fileURLToPath(new URL("../../node_modules/.bin/prisma", import.meta.url));
  await promisify(execFile)(prismaBin, ["generate", "--config", "prisma.config.ts"], {
    cwd: dir,
    env: { ...process.env, PRISMA_SCHEMA_ENGINE_BINARY: "/bin/true", PRISMA_HIDE_UPDATE_MESSAGE: "1" },
  });
  const generated = "./prisma/generated/client.ts";
  const { PrismaClient } = (await import(/* @vite-ignore */ generated)) as {
    PrismaClient: new (options: { adapter: PrismaMariaDb }) => Client;
  };
  const url = new URL(mysqlUrl);
  prisma = new PrismaClient({
    adapter: new PrismaMariaDb({
      host: url.hostname,
      port: Number(url.port || 3306),
      user: decodeURIComponent(url.username),
      password: decodeURIComponent(url.password),
      database: url.pathname.slice(1),
      connectionLimit: 2,
    }),
  });
  await migrate(pool, { table });
  await pool.query("DROP TABLE IF EXISTS prisma_recipe_orders");
  await pool.query("CREATE TABLE prisma_recipe_orders (id INT AUTO_INCREMENT PRIMARY KEY, total INT NOT NULL)");
}, 120_000);

afterAll(async () => {
  await prisma?.$disconnect();
  await store.close();
  await pool.query(`DROP TABLE IF EXISTS \`${table}\`, \`${table}_fence\`, prisma_recipe_orders`);
  await pool.end();
});

it("commits the order and its outbox entries together, or neither", async () => {
  const ids = await prisma.$transaction(async (tx) => {
    const order = await tx.order.create({ data: { total: 42 } });
    return store.enqueue(fromPrisma(tx), [
      {
        topic: "orders",
        key: `order-${order.id}`,
        payload: JSON.stringify({ type: "OrderPlaced", id: order.id }),
        headers: { "content-type": "application/json", nul: "a\u0000b" },
      },
      { topic: "orders", key: `order-${order.id}`, payload: new Uint8Array([0, 255, 1]) },
    ]);
  });
  await expect(
    prisma.$transaction(async (tx) => {
      await tx.order.create({ data: { total: 7 } });
      await store.enqueue(fromPrisma(tx), { topic: "orders", payload: "never" });
      throw new Error("payment declined");
    }),
  ).rejects.toThrow("payment declined");
  const entries = await store.claim({ claimer: "relay", limit: 10, leaseMs: 30_000 });
  expect(entries.map((e) => e.id)).toEqual(ids);
  expect(entries[0]?.headers).toEqual({ "content-type": "application/json", nul: "a\u0000b" });
  expect([...(entries[1]?.payload ?? [])]).toEqual([0, 255, 1]);
  expect(await prisma.order.count()).toBe(1);
});
