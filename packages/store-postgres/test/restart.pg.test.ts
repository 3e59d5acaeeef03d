import { keyOrderViolations } from "@outbox/conformance";
import { type OutboxError, OutboxRelay } from "@outbox/core";
import { MemoryPublisher } from "@outbox/memory";
import { expect, it } from "vitest";
import { createPostgresStore, migrate } from "../src/index.js";
import { createPool, freshSchema, inTransaction, restartPostgres, waitFor } from "./helpers.js";

// Restarts the shared local server: its own file, and it waits until the server is back, so the
// files that run after it (sequentially: fileParallelism is off) see a healthy server.
it("a PostgreSQL restart (immediate: crash and recovery) never crashes the relay; it resumes when the server is back", async () => {
  const pool = createPool({ max: 4, application_name: "outbox-restart" });
  const schema = freshSchema();
  await migrate(pool, { schema });
  const storeErrors: OutboxError[] = [];
  const store = createPostgresStore({ pool, schema, onError: (error) => storeErrors.push(error) });
  const broker = new MemoryPublisher();
  const relay = new OutboxRelay({ store, publisher: broker, pollMs: 100, batchSize: 20, leaseMs: 2_000 });
  const relayErrors: unknown[] = [];
  relay.on("error", ({ error }) => relayErrors.push(error));
  const seq = (m: { headers: Readonly<Record<string, string>> }) => Number(m.headers.seq);
  const batch = (from: number) =>
    Array.from({ length: 100 }, (_, i) => ({
      topic: "t",
      key: `k${i % 4}`,
      payload: "x",
      headers: { seq: String(from + i) },
    }));
  try {
    relay.start();
    await inTransaction(pool, (tx) => store.enqueue(tx, batch(0)));
    await waitFor(() => broker.messages.length >= 100, 10_000, "the first 100");
    await restartPostgres("immediate");
    // The relay was polling while the server was down: it reported errors and kept going.
    await inTransaction(pool, (tx) => store.enqueue(tx, batch(100)));
    await waitFor(() => new Set(broker.messages.map(seq)).size === 200, 30_000, "all 200 after the restart");
    expect(relay.running).toBe(true);
    expect(relayErrors.length + storeErrors.length).toBeGreaterThan(0);
    const firsts = new Map<number, { key: string | null; seq: number }>();
    for (const m of broker.messages) if (!firsts.has(seq(m))) firsts.set(seq(m), { key: m.key, seq: seq(m) });
    expect(keyOrderViolations([...firsts.values()])).toEqual([]);
    // The LISTEN connection came back too.
    await waitFor(
      async () =>
        (
          await pool.query(
            "SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'outbox-restart' AND query LIKE 'LISTEN%'",
          )
        ).rows[0].n === 1,
      10_000,
      "the LISTEN connection",
    );
    console.log(`relay errors: ${relayErrors.length}, store background errors: ${storeErrors.length}`);
  } finally {
    await relay.stop();
    await store.close();
    await pool.query(`DROP SCHEMA "${schema}" CASCADE`);
    await pool.end();
  }
}, 90_000);
