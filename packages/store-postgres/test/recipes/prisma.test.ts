// Recipe: enqueue inside a Prisma interactive transaction ($transaction + raw SQL), Prisma 7 with
// the pg driver adapter. Runnable: this file is a test (it runs `prisma generate` first).
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { PrismaPg } from "@prisma/adapter-pg";
import { afterAll, beforeAll, expect, it } from "vitest";
import { createPostgresStore, fromPrisma, migrate, type PrismaLike } from "../../src/index.js";
import { createPool, freshSchema, pgUrl } from "../helpers.js";

// The generated client's surface this recipe uses (the real types come from `prisma generate`).
interface Tx extends PrismaLike {
  order: { create(args: { data: { total: number } }): Promise<{ id: number }>; count(): Promise<number> };
}
interface Client extends Tx {
  $transaction<T>(work: (tx: Tx) => Promise<T>): Promise<T>;
  $disconnect(): Promise<void>;
}

const dir = fileURLToPath(new URL("./prisma/", import.meta.url));
const schema = freshSchema("prisma");
const pool = createPool({ max: 2 });
const store = createPostgresStore({ pool, schema });
let prisma: Client;

beforeAll(async () => {
  // Prisma 7 generates a TypeScript client with no query engine binary. The CLI still checks for
  // a schema engine it does not need for `generate`; where its download host is unreachable,
  // pointing it at any executable lets generation proceed offline.
  // The package's own prisma binary, by path: `pnpm exec` from this directory finds it only
  // when the test itself was started through a pnpm script.
  const prismaBin = fileURLToPath(new URL("../../node_modules/.bin/prisma", import.meta.url));
  await promisify(execFile)(prismaBin, ["generate", "--config", "prisma.config.ts"], {
    cwd: dir,
    env: { ...process.env, PRISMA_SCHEMA_ENGINE_BINARY: "/bin/true", PRISMA_HIDE_UPDATE_MESSAGE: "1" },
  });
  const generated = "./prisma/generated/client.ts";
  const { PrismaClient } = (await import(/* @vite-ignore */ generated)) as {
    PrismaClient: new (options: { adapter: PrismaPg }) => Client;
  };
  prisma = new PrismaClient({ adapter: new PrismaPg({ connectionString: pgUrl }, { schema }) });
  await migrate(pool, { schema });
  await pool.query(`CREATE TABLE "${schema}".orders (id serial PRIMARY KEY, total int NOT NULL)`);
}, 120_000);

afterAll(async () => {
  await prisma?.$disconnect();
  await store.close();
  await pool.query(`DROP SCHEMA "${schema}" CASCADE`);
  await pool.end();
});

it("commits the order and its outbox entry together, or neither", async () => {
  const ids = await prisma.$transaction(async (tx) => {
    const order = await tx.order.create({ data: { total: 42 } });
    return store.enqueue(fromPrisma(tx), {
      topic: "orders",
      key: `order-${order.id}`,
      payload: JSON.stringify({ type: "OrderPlaced", id: order.id }),
      headers: { "content-type": "application/json" },
    });
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
  expect(entries[0]?.headers).toEqual({ "content-type": "application/json" });
  expect(await prisma.order.count()).toBe(1);
});
