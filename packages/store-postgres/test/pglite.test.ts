import { PGlite } from "@electric-sql/pglite";
import { OutboxRelay } from "@outbox/core";
import { MemoryPublisher } from "@outbox/memory";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createPostgresStore, migrate } from "../src/index.js";
import { freshSchema, waitFor } from "./helpers.js";

let db: PGlite;
beforeAll(async () => {
  db = await PGlite.create();
});
afterAll(() => db.close());

describe("PGlite (in-process PostgreSQL)", () => {
  it("quick start: migrate, enqueue inside pglite.transaction, relay publishes on the wake-up", async () => {
    const schema = freshSchema();
    await migrate(db, { schema });
    await migrate(db, { schema }); // idempotent
    const store = createPostgresStore({ db, schema });
    expect(store.capabilities).toEqual({
      wakeUps: true,
      transactions: true,
      concurrentWriters: false,
      deadLetterFilters: true,
    });
    await db.exec(`CREATE TABLE "${schema}".orders (id serial PRIMARY KEY, total int)`);
    const broker = new MemoryPublisher();
    const relay = new OutboxRelay({ store, publisher: broker, pollMs: 60_000 });
    relay.start();
    try {
      await waitFor(() => relay.metrics().cycles >= 1, 5_000, "the first cycle");
      const start = performance.now();
      await db.transaction(async (tx) => {
        const { rows } = await tx.query<{ id: number }>(
          `INSERT INTO "${schema}".orders (total) VALUES ($1) RETURNING id`,
          [42],
        );
        await store.enqueue(tx, {
          topic: "orders",
          key: `order-${rows[0]?.id}`,
          payload: JSON.stringify({ id: rows[0]?.id, total: 42 }),
        });
      });
      await waitFor(() => broker.messages.length === 1, 10_000, "the publish");
      expect(performance.now() - start).toBeLessThan(5_000);
      expect(broker.messages[0]?.key).toBe("order-1");
    } finally {
      await relay.stop();
      await store.close();
      await db.exec(`DROP SCHEMA "${schema}" CASCADE`);
    }
  });

  it("a rolled-back PGlite transaction leaves neither the business row nor the entry", async () => {
    const schema = freshSchema();
    await migrate(db, { schema });
    const store = createPostgresStore({ db, schema });
    await db.exec(`CREATE TABLE "${schema}".orders (id serial PRIMARY KEY)`);
    try {
      await expect(
        db.transaction(async (tx) => {
          await tx.query(`INSERT INTO "${schema}".orders DEFAULT VALUES`);
          await store.enqueue(tx, { topic: "orders", payload: "x" });
          throw new Error("business rule failed");
        }),
      ).rejects.toThrow("business rule failed");
      expect((await store.stats()).pending).toBe(0);
      const { rows } = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM "${schema}".orders`);
      expect(rows[0]?.n).toBe(0);
    } finally {
      await store.close();
      await db.exec(`DROP SCHEMA "${schema}" CASCADE`);
    }
  });

  it("works with a persistent PGlite data directory across reopen", async () => {
    const { mkdtemp, rm } = await import("node:fs/promises");
    const { tmpdir } = await import("node:os");
    const { join } = await import("node:path");
    const dir = await mkdtemp(join(tmpdir(), "outbox-pglite-"));
    try {
      const first = await PGlite.create(dir);
      await migrate(first);
      const store = createPostgresStore({ db: first });
      const ids = await first.transaction((tx) =>
        store.enqueue(tx, [
          { topic: "t", payload: "a" },
          { topic: "t", payload: "b" },
        ]),
      );
      await store.claim({ claimer: "c", limit: 1, leaseMs: 60_000 });
      await store.close();
      await first.close();
      const second = await PGlite.create(dir);
      const reopened = createPostgresStore({ db: second });
      const stats = await reopened.stats();
      expect(stats.pending).toBe(2);
      expect(stats.inFlight).toBe(1);
      const claimed = await reopened.claim({ claimer: "c", limit: 10, leaseMs: 60_000 });
      expect(claimed.map((e) => e.id)).toEqual([ids[1]]);
      await reopened.close();
      await second.close();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
