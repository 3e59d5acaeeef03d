import { keyOrderViolations } from "@outbox/conformance";
import { OutboxRelay } from "@outbox/core";
import { MemoryPublisher } from "@outbox/memory";
import { expect, it } from "vitest";
import { createMySqlStore, migrate } from "../src/index.js";
import { createPool, freshTable, inTransaction, restartMariaDb, waitFor } from "./helpers.js";

// Restarts the shared local server: its own file, and it waits until the server is back, so the
// files that run after it (sequentially: fileParallelism is off) see a healthy server.
it("a MariaDB restart never crashes the relay; it resumes when the server is back", async () => {
  const pool = createPool({ connectionLimit: 4, connectTimeout: 2_000 });
  const table = freshTable();
  await migrate(pool, { table });
  const store = createMySqlStore({ pool, table });
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
    await restartMariaDb();
    // The relay was polling while the server was down: it reported errors and kept going.
    await waitFor(() => inTransaction(pool, (tx) => store.enqueue(tx, batch(100))), 30_000, "an enqueue after restart");
    await waitFor(() => new Set(broker.messages.map(seq)).size === 200, 30_000, "all 200 after the restart");
    expect(relay.running).toBe(true);
    expect(relayErrors.length).toBeGreaterThan(0);
    const firsts = new Map<number, { key: string | null; seq: number }>();
    for (const m of broker.messages) if (!firsts.has(seq(m))) firsts.set(seq(m), { key: m.key, seq: seq(m) });
    expect(keyOrderViolations([...firsts.values()])).toEqual([]);
    console.log(`relay errors during the restart: ${relayErrors.length}`);
  } finally {
    await relay.stop();
    await store.close();
    await pool.query(`DROP TABLE IF EXISTS \`${table}\`, \`${table}_fence\``);
    await pool.end();
  }
}, 120_000);
