import { describeInboxStoreConformance, type InboxStoreHarness } from "@outbox/conformance/inbox";
import { ManualClock } from "@outbox/core";
import { createInbox, type InboxMessage } from "@outbox/inbox";
import { MongoClient } from "mongodb";
import { afterAll, describe, expect, it } from "vitest";
import {
  createMongoInboxStore,
  createMongoStore,
  type MongoInboxStoreOptions,
  type MongoTransaction,
} from "../src/index.js";
import { createClient, dropStore, freshCollection, mongoJavaUrl, mongoUrl, testDb } from "./helpers.js";

// The inbox kit on both MongoDB-wire servers the store's tests use: FerretDB 1.24 and mongo-java-server 1.47.
// Neither has multi-document transactions, so the store runs with transactions: false there: the key is a
// lease while the handler runs (the kit checks the rollback of the handler's writes only where a store declares
// transactions). Each server gets a second client for the kit's peer (another consumer process).
const servers = [
  { name: "FerretDB 1.24", url: mongoUrl },
  { name: "mongo-java-server 1.47", url: mongoJavaUrl },
].map((server) => ({
  ...server,
  client: createClient({ appName: "outbox-inbox" }, server.url),
  peerClient: createClient({ appName: "outbox-inbox-peer" }, server.url),
}));
afterAll(() => Promise.all(servers.flatMap((s) => [s.client.close(), s.peerClient.close()])));

async function dropInbox(client: MongoClient, collection: string): Promise<void> {
  const db = client.db(testDb);
  for (const name of [collection, `${collection}_attempts`, `${collection}_effects`]) {
    await db.dropCollection(name).catch(() => undefined);
  }
}

/** An inbox store on fresh collections; effects are documents in `<collection>_effects`. */
async function mongoInboxHarness(
  clock: ManualClock,
  client: MongoClient,
  peerClient: MongoClient,
): Promise<InboxStoreHarness<MongoTransaction>> {
  const collection = freshCollection("inbox");
  const options = (on: MongoClient): MongoInboxStoreOptions => ({
    client: on,
    db: testDb,
    collection,
    transactions: false,
    clock,
  });
  const store = createMongoInboxStore(options(client));
  await store.init();
  const effects = client.db(testDb).collection<{ name: string }>(`${collection}_effects`);
  return {
    store,
    clock,
    effect: async (tx, name) => {
      await effects.insertOne({ name }, tx ? { session: tx } : {});
    },
    countEffects: (name) => effects.countDocuments({ name }),
    peer: async () => createMongoInboxStore(options(peerClient)),
    async teardown() {
      await store.close();
      await dropInbox(client, collection);
    },
  };
}

for (const server of servers) {
  describeInboxStoreConformance({
    name: `store-mongodb inbox (${server.name}, transactions: false)`,
    create: (clock) => mongoInboxHarness(clock, server.client, server.peerClient),
  });
}

const [ferret, java] = servers as [(typeof servers)[0], (typeof servers)[0]];

describe("store-mongodb inbox without transactions", () => {
  it("follow-up outbox entries enqueued in the handler are written with it (chaining, transactions: false)", async () => {
    const collection = freshCollection("inbox");
    const outbox = createMongoStore({
      client: ferret.client,
      db: testDb,
      collection: freshCollection(),
      transactions: false,
    });
    const store = createMongoInboxStore({ client: ferret.client, db: testDb, collection, transactions: false });
    const inbox = createInbox({ store, maxAttempts: 10 });
    try {
      await outbox.init();
      const forward = async (tx: MongoTransaction, message: InboxMessage) => {
        await outbox.enqueue(tx, { topic: "payments.requested", key: message.key, payload: `for ${message.id}` });
      };
      const message: InboxMessage = { id: "order-1", key: "customer-7" };
      expect((await inbox.handle(message, forward)).status).toBe("handled");
      expect((await inbox.handle(message, forward)).status).toBe("duplicate");
      expect((await outbox.stats()).pending, "one follow-up entry, whatever the redeliveries").toBe(1);
    } finally {
      await outbox.close();
      await dropStore(ferret.client, outbox);
      await dropInbox(ferret.client, collection);
    }
  });

  for (const server of servers) {
    it(`runs the docs/inbox.md example as written (a redelivery included) on ${server.name}`, async () => {
      const database = freshCollection("docs");
      const url = new URL(server.url);
      url.pathname = `/${database}`;
      const MONGODB_URL = url.href;
      const transactions = false;
      const message: InboxMessage = { id: "order-1", idempotencyKey: "order-created:order-1" };
      const orderId = "order-1";
      const payload = JSON.stringify({ orderId });
      const clients: MongoClient[] = [];
      // One delivery, as a consumer process runs it.
      const deliver = async () => {
        // docs/inbox.md, "On MongoDB", from here
        const client = new MongoClient(MONGODB_URL); // the URL's path names the database
        const db = client.db();
        // transactions: true (the default) needs a replica set or a sharded cluster; false on a standalone server
        const store = createMongoInboxStore({ client, db: db.databaseName, transactions });
        await store.init(); // the server check and the indexes
        const outbox = createMongoStore({ client, db: db.databaseName, transactions });
        const inbox = createInbox({ store, consumer: "shipping" });

        await inbox.handle(message, async (session) => {
          // session: the transaction's ClientSession, or null with transactions: false
          await db.collection("shipments").insertOne({ orderId }, session ? { session } : {});
          await outbox.enqueue(session, { topic: "shipments.created", key: orderId, payload });
        });
        // to here
        clients.push(client);
        return { db, outbox };
      };
      try {
        await deliver();
        const { db, outbox } = await deliver();
        expect(await db.collection("shipments").countDocuments({}), "one shipment for two deliveries").toBe(1);
        expect((await outbox.stats()).pending, "one follow-up entry").toBe(1);
      } finally {
        await Promise.all(clients.map((client) => client.close()));
        await server.client
          .db(database)
          .dropDatabase()
          .catch(() => undefined);
      }
    });
  }

  it("a delivery whose process died holds the key until its lease runs out; then a redelivery takes it over", async () => {
    const clock = new ManualClock();
    const collection = freshCollection("inbox");
    const options = { db: testDb, collection, transactions: false, clock, leaseMs: 60_000 };
    const crashed = createMongoInboxStore({ client: java.client, ...options });
    const survivor = createMongoInboxStore({ client: java.peerClient, ...options });
    try {
      // The crashed consumer recorded the key and never finished: its handler never settles.
      let entered!: () => void;
      const inHandler = new Promise<void>((resolve) => {
        entered = resolve;
      });
      void crashed.transaction(async (tx) => {
        await crashed.record(tx, { consumer: "c", messageId: "m-1", at: new Date(clock.now()) });
        entered();
        await new Promise(() => undefined);
      });
      await inHandler;
      await crashed.close();
      let ran = 0;
      const inbox = createInbox({ store: survivor, consumer: "c", clock });
      const redelivery = inbox.handle({ id: "m-1" }, async () => {
        ran += 1;
      });
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(ran, "the redelivery waits while the hold lasts").toBe(0);
      clock.advance(60_000);
      expect((await redelivery).status, "once the hold ran out, the redelivery takes the key over").toBe("handled");
      expect(ran).toBe(1);
      expect((await inbox.handle({ id: "m-1" }, async () => undefined)).status).toBe("duplicate");
    } finally {
      await survivor.close();
      await dropInbox(java.client, collection);
    }
  });

  it("refuses bad options with OUTBOX_INVALID_OPTIONS; transactions: true on a standalone server fails init()", async () => {
    const invalid = expect.objectContaining({ code: "OUTBOX_INVALID_OPTIONS" });
    expect(() => createMongoInboxStore({} as never)).toThrow(invalid);
    expect(() => createMongoInboxStore({ client: ferret.client, db: "" })).toThrow(invalid);
    expect(() => createMongoInboxStore({ client: ferret.client, db: testDb, collection: "a$b" })).toThrow(invalid);
    expect(() => createMongoInboxStore({ client: ferret.client, db: testDb, leaseMs: 0 })).toThrow(invalid);
    const standalone = createMongoInboxStore({ client: java.client, db: testDb, collection: freshCollection() });
    await expect(standalone.init()).rejects.toThrow(invalid);
    const store = createMongoInboxStore({ client: java.client, db: testDb, transactions: false });
    await expect(store.record(null, { consumer: "c", messageId: "m", at: new Date() })).rejects.toThrow(invalid);
    await store.close();
    await expect(store.listDead("c")).rejects.toThrow(expect.objectContaining({ code: "OUTBOX_CLOSED" }));
  });
});

describe("store-mongodb inbox: stats", () => {
  for (const server of servers) {
    it(`counts by consumer, reading counters by _id range and past a batch of 1,000, on ${server.name}`, async () => {
      const collection = freshCollection("inbox");
      const store = createMongoInboxStore({ client: server.client, db: testDb, collection, transactions: false });
      await store.init();
      const db = server.client.db(testDb);
      const base = Date.UTC(2030, 0, 1);
      const id = (consumer: string, messageId: string) => JSON.stringify([consumer, messageId]);
      try {
        // Consumer "a": 1,200 processed keys (recorded i seconds after base) and 5 dead letters; 2,000 attempt
        // counters, 1,200 of them left over by the keys handled since. Consumers whose names extend "a" (`a"`
        // escapes its quote in the _id's JSON; "ab") have counters of their own, next to a's in _id order.
        await db.collection<{ _id: string }>(collection).insertMany([
          ...Array.from({ length: 1_200 }, (_, i) => ({
            _id: id("a", `m${i}`),
            consumer: "a",
            messageId: `m${i}`,
            status: "processed",
            recordedAt: new Date(base + i * 1_000),
          })),
          ...Array.from({ length: 5 }, (_, i) => ({
            _id: id("a", `d${i}`),
            consumer: "a",
            messageId: `d${i}`,
            status: "dead",
            recordedAt: new Date(base - i * 1_000),
            attempts: 5,
            lastError: "boom",
            message: "{}",
          })),
        ]);
        const counter = (consumer: string, messageId: string) => ({
          _id: id(consumer, messageId),
          attempts: 1,
          lastError: "boom",
          updatedAt: new Date(base),
        });
        await db
          .collection<{ _id: string }>(`${collection}_attempts`)
          .insertMany([
            ...Array.from({ length: 2_000 }, (_, i) => counter("a", i < 1_200 ? `m${i}` : `f${i}`)),
            ...Array.from({ length: 7 }, (_, i) => counter('a"', `f${i}`)),
            ...Array.from({ length: 3 }, (_, i) => counter("ab", `f${i}`)),
          ]);

        const a = {
          consumer: "a",
          processed: 1_200,
          dead: 5,
          failing: 800,
          oldestProcessedAt: new Date(base),
          newestProcessedAt: new Date(base + 1_199_000),
          oldestDeadAt: new Date(base - 4_000),
        };
        expect(await store.stats("a")).toEqual([a]);
        const only = (consumer: string, failing: number) => ({
          consumer,
          processed: 0,
          dead: 0,
          failing,
          oldestProcessedAt: null,
          newestProcessedAt: null,
          oldestDeadAt: null,
        });
        expect(await store.stats('a"')).toEqual([only('a"', 7)]);
        expect(await store.stats()).toEqual([a, only('a"', 7), only("ab", 3)]);
      } finally {
        await store.close();
        await dropInbox(server.client, collection);
      }
    });
  }
});
