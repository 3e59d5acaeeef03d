import { ManualClock } from "@outbox/core";
import { TcpProxy } from "@outbox/test-support/tcp-proxy";
import { waitFor } from "@outbox/test-support/wait";
import type { MongoClient } from "mongodb";
import { afterAll, describe, expect, it } from "vitest";
import { createMongoStore, type MongoStore } from "../src/index.js";
import { createClient, dropStore, freshCollection, mongoHarness, mongoJavaUrl, testDb } from "./helpers.js";

// mongo-java-server 1.47 (scripts/services.sh start mongo-java): what the kit cannot show.
const client = createClient({}, mongoJavaUrl);
afterAll(() => client.close());

function store(on: MongoClient, collection: string): MongoStore {
  return createMongoStore({
    client: on,
    db: testDb,
    collection,
    transactions: false,
    onError: () => undefined,
  });
}

/** Resolves with "woken" at the next call of the returned listener, or "timeout" after `ms`. */
function nextWake(ms = 5_000): { listener: () => void; woken: Promise<"woken" | "timeout"> } {
  let listener = () => {};
  const woken = new Promise<"woken" | "timeout">((resolve) => {
    listener = () => resolve("woken");
    setTimeout(resolve, ms, "timeout").unref();
  });
  return { listener: () => listener(), woken };
}

describe("change streams (mongo-java-server, oplog on)", () => {
  it("init() reads change streams, no transactions, atomic updates and $first from the server", async () => {
    const { store: s, teardown } = await mongoHarness(new ManualClock(), client, {}, { sessions: false });
    try {
      expect(s.capabilities).toEqual({ wakeUps: true, transactions: false, deadLetterFilters: true });
      expect((s as MongoStore).server).toEqual({
        replicated: false,
        changeStreams: true,
        atomicUpdates: true,
        groupFirst: true,
        secondaryIndexes: true,
      });
    } finally {
      await teardown();
    }
  });

  it("wakeUps: false polls only, whatever the server has", async () => {
    const s = createMongoStore({
      client,
      db: testDb,
      collection: freshCollection(),
      transactions: false,
      wakeUps: false,
    });
    try {
      await s.init();
      expect(s.capabilities.wakeUps).toBe(false);
    } finally {
      await dropStore(client, s);
    }
  });

  it("an enqueue by another client (another process) wakes a subscriber through the change stream", async () => {
    const collection = freshCollection("cs");
    const other = createClient({}, mongoJavaUrl);
    const relaySide = store(client, collection);
    const writerSide = store(other, collection);
    try {
      await relaySide.init();
      const first = nextWake();
      const unsubscribe = await relaySide.subscribe(first.listener);
      // Only the other store writes: this process's own enqueue wake-up cannot fire here.
      await writerSide.enqueue(null, { topic: "t", payload: "x" });
      expect(await first.woken).toBe("woken");
      await unsubscribe();
    } finally {
      await relaySide.close();
      await writerSide.close();
      await dropStore(client, relaySide);
      await other.close();
    }
  });

  it("the change stream comes back after its connections are killed (3 times), and wakes again", async () => {
    const proxy = await TcpProxy.start(new URL(mongoJavaUrl).host);
    const viaProxy = createClient(
      { serverSelectionTimeoutMS: 2_000 },
      `mongodb://${proxy.endpoint}/?directConnection=true`,
    );
    const collection = freshCollection("cs");
    const relaySide = store(viaProxy, collection);
    const writerSide = store(client, collection);
    let wakes = 0;
    let lastWakeAt = Date.now();
    /** The stream is live: once quiet (no reopen going on), another client's enqueue wakes us. */
    const live = async (what: string) => {
      await waitFor(() => Date.now() - lastWakeAt > 1_000, 15_000, `quiet before ${what}`);
      const before = wakes;
      await writerSide.enqueue(null, { topic: "t", payload: what });
      await waitFor(() => wakes > before, 5_000, `a change-stream wake-up for ${what}`);
    };
    try {
      await relaySide.init();
      const unsubscribe = await relaySide.subscribe(() => {
        wakes++;
        lastWakeAt = Date.now();
      });
      for (let kill = 1; kill <= 3; kill++) {
        await live(`the enqueue before kill ${kill}`);
        const before = wakes;
        expect(await proxy.dropEach()).toBeGreaterThan(0);
        // This server returns no resume token, so the driver cannot resume the stream: the store
        // reopens it and wakes once to catch up with what happened meanwhile.
        await waitFor(() => wakes > before, 10_000, `the catch-up wake-up after kill ${kill}`);
      }
      await live("the enqueue after the kills");
      await unsubscribe();
    } finally {
      await relaySide.close();
      await writerSide.close();
      await dropStore(client, writerSide);
      await viaProxy.close();
      await proxy.close();
    }
  });
});

describe("what the store relies on, checked on this server", () => {
  it("a conditional update is a compare-and-set: of 8 concurrent clients, exactly one wins each round", async () => {
    const clients = Array.from({ length: 8 }, () => createClient({}, mongoJavaUrl));
    const name = freshCollection("cas");
    try {
      await client
        .db(testDb)
        .collection(name)
        .insertOne({ _id: "x" as never, gen: 0 });
      for (let gen = 0; gen < 20; gen++) {
        const results = await Promise.all(
          clients.map((c, i) =>
            c
              .db(testDb)
              .collection<{ _id: string; gen: number; owner?: number }>(name)
              .updateOne({ _id: "x", gen }, { $set: { owner: i }, $inc: { gen: 1 } }),
          ),
        );
        expect(results.reduce((sum, r) => sum + r.modifiedCount, 0)).toBe(1);
      }
    } finally {
      await client
        .db(testDb)
        .dropCollection(name)
        .catch(() => undefined);
      await Promise.all(clients.map((c) => c.close()));
    }
  });

  it("$inc loses no increment under 8 concurrent clients (the id counter)", async () => {
    const clients = Array.from({ length: 8 }, () => createClient({}, mongoJavaUrl));
    const name = freshCollection("inc");
    try {
      await Promise.all(
        clients.map(async (c) => {
          for (let i = 0; i < 25; i++) {
            await c
              .db(testDb)
              .collection<{ _id: string; value: number }>(name)
              .findOneAndUpdate({ _id: "seq" }, { $inc: { value: 1 } }, { upsert: true, returnDocument: "after" })
              .catch((error: unknown) => {
                // Two first-ever upserts may race to insert it (as on MongoDB); the store retries.
                if ((error as { code?: unknown }).code !== 11000) throw error;
                return c
                  .db(testDb)
                  .collection<{ _id: string; value: number }>(name)
                  .updateOne({ _id: "seq" }, { $inc: { value: 1 } });
              });
          }
        }),
      );
      const doc = await client.db(testDb).collection<{ _id: string; value: number }>(name).findOne({ _id: "seq" });
      expect(doc?.value).toBe(200);
    } finally {
      await client
        .db(testDb)
        .dropCollection(name)
        .catch(() => undefined);
      await Promise.all(clients.map((c) => c.close()));
    }
  });
});
