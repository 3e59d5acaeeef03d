import { keyOrderViolations } from "@outbox/conformance";
import { type OutboxError, OutboxRelay } from "@outbox/core";
import { MemoryPublisher } from "@outbox/memory";
import { services } from "@outbox/test-support/services";
import { waitFor } from "@outbox/test-support/wait";
import { expect, it } from "vitest";
import { createMongoStore } from "../src/index.js";
import { createClient, dropStore, freshCollection, testDb } from "./helpers.js";

// Restarts the shared server: its own file, and it waits until the server is back.
it("a server restart (every connection dropped) never crashes the relay; it delivers everything in key order", async () => {
  const client = createClient({ serverSelectionTimeoutMS: 2_000 });
  const relayClient = createClient({ serverSelectionTimeoutMS: 2_000 });
  const collection = freshCollection("restart");
  const storeErrors: OutboxError[] = [];
  const writer = createMongoStore({ client, db: testDb, collection, transactions: false });
  const store = createMongoStore({
    client: relayClient,
    db: testDb,
    collection,
    transactions: false,
    onError: (error) => storeErrors.push(error),
  });
  await store.init();
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
    await writer.enqueue(null, batch(0));
    await writer.enqueue(null, batch(100));
    await waitFor(() => new Set(broker.messages.map(seq)).size >= 30, 20_000, "the first entries");
    // The server restarts on its own data (SQLite files kept).
    await services("restart", "mongodb", "--keep-data");
    await waitFor(() => writer.enqueue(null, batch(200)).then(() => true), 30_000, "the server to accept writes");
    await waitFor(() => new Set(broker.messages.map(seq)).size === 300, 30_000, "all 300 after the restart");
    expect(relay.running).toBe(true);
    const firsts = new Map<number, { key: string | null; seq: number }>();
    for (const m of broker.messages) if (!firsts.has(seq(m))) firsts.set(seq(m), { key: m.key, seq: seq(m) });
    expect(keyOrderViolations([...firsts.values()])).toEqual([]);
    console.log(
      `delivered ${broker.messages.length} (distinct 300), relay errors: ${relayErrors.length}, store errors: ${storeErrors.length}`,
    );
  } finally {
    await relay.stop();
    await store.close();
    await dropStore(client, writer);
    await writer.close();
    await relayClient.close();
    await client.close();
  }
}, 120_000);
