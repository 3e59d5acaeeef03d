import { OutboxError, OutboxErrorCode } from "@outbox/core";
import { Long } from "mongodb";
import { afterAll, expect, it } from "vitest";
import { createMongoStore } from "../src/index.js";
import { createClient, dropStore, freshCollection, testDb } from "./helpers.js";

const client = createClient();
afterAll(() => client.close());

it("transactions: true on a server without transactions fails at init with OUTBOX_INVALID_OPTIONS", async () => {
  const store = createMongoStore({ client, db: testDb, collection: freshCollection() });
  const error = await store.init().catch((e: unknown) => e);
  expect(OutboxError.is(error, OutboxErrorCode.InvalidOptions)).toBe(true);
  expect(store.capabilities.wakeUps).toBe(false);
});

it("init() finds no change streams on FerretDB (the probe is refused, the connection stays usable)", async () => {
  const store = createMongoStore({ client, db: testDb, collection: freshCollection(), transactions: false });
  try {
    await store.init();
    // FerretDB 1.x: updates are read, filter, write back (claims use tickets), $group has no
    // $first, and no query uses a secondary index (the store creates none there).
    expect(store.server).toEqual({
      replicated: false,
      changeStreams: false,
      atomicUpdates: false,
      groupFirst: false,
      secondaryIndexes: false,
    });
    expect(store.capabilities).toEqual({ wakeUps: false, transactions: false });
    expect((await store.stats()).pending).toBe(0);
  } finally {
    await dropStore(client, store);
  }
});

it("no sequence-gap loss: an entry inserted late with a lower id is still claimed", async () => {
  const store = createMongoStore({ client, db: testDb, collection: freshCollection(), transactions: false });
  try {
    await store.init();
    const [a, b] = await store.enqueue(null, [
      { topic: "t", payload: "1" },
      { topic: "t", payload: "2" },
    ]);
    const claimed = await store.claim({ claimer: "c", limit: 10, leaseMs: 60_000 });
    expect(claimed.map((e) => e.id)).toEqual([a, b]);
    await store.ack([a as string, b as string], { claimer: "c" });
    // A concurrent enqueuer reserved id 0 before ours but inserts only now (the no-transactions
    // "late commit"): a claim selects by status, never "id > last seen".
    await client
      .db(testDb)
      .collection(store.names.entries)
      .insertOne({
        _id: Long.fromNumber(0) as never,
        topic: "t",
        key: null,
        payload: Buffer.from("0"),
        headers: "{}",
        idempotencyKey: null,
        createdAt: new Date(),
        availableAt: new Date(0),
        status: "pending",
        gen: 0,
        attempts: 0,
        lastError: null,
        claimedBy: null,
        claimId: null,
        leaseUntil: null,
        leaseLock: null,
        leaseToken: null,
        settledAt: null,
      });
    const late = await store.claim({ claimer: "c", limit: 10, leaseMs: 60_000 });
    expect(late.map((e) => e.id)).toEqual(["0"]);
  } finally {
    await dropStore(client, store);
  }
});

it("concurrent enqueuers without transactions never lose or duplicate an entry", async () => {
  const store = createMongoStore({ client, db: testDb, collection: freshCollection(), transactions: false });
  const writers = Array.from({ length: 4 }, () => createClient());
  try {
    await store.init();
    const stores = writers.map((c) =>
      createMongoStore({ client: c, db: testDb, collection: store.names.entries, transactions: false }),
    );
    const ids = (
      await Promise.all(
        stores.map((s, w) =>
          Promise.all(
            Array.from({ length: 10 }, (_, i) =>
              s.enqueue(null, [
                { topic: "t", payload: `${w}-${i}` },
                { topic: "t", payload: "y" },
              ]),
            ),
          ),
        ),
      )
    ).flat(2);
    expect(new Set(ids).size).toBe(80);
    expect((await store.stats()).pending).toBe(80);
  } finally {
    await dropStore(client, store);
    await Promise.all(writers.map((c) => c.close()));
  }
});
