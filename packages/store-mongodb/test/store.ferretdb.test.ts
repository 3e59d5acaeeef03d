import { ManualClock, OutboxError, OutboxErrorCode } from "@outbox/core";
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
    expect(store.capabilities).toEqual({ wakeUps: false, transactions: false, deadLetterFilters: true });
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

it("tickets a claimer left before it could lease (it died): every entry behind them is claimed at once, and the stuck ones together, one lease time later", async () => {
  const clock = new ManualClock(Date.now());
  const store = createMongoStore({
    client,
    db: testDb,
    collection: freshCollection(),
    transactions: false,
    clock,
  });
  try {
    await store.init();
    const ids = (await store.enqueue(
      null,
      Array.from({ length: 6 }, (_, i) => ({ topic: "t", key: `k${i}`, payload: String(i) })),
    )) as string[];
    // A claim took the tickets of the 2nd to 4th entries' current state (gen 0) and died before
    // its lease update: no lease on the entries, only the tickets, valid for its lease time.
    await client
      .db(testDb)
      .collection(store.names.claims)
      .insertMany(
        ids.slice(1, 4).map((id) => ({
          _id: `${id}:0`,
          seq: Long.fromString(id),
          claimId: "a-claim-that-died",
          until: new Date(clock.now() + 10_000),
        })) as never,
      );
    const claim = async () => {
      const claimed = await store.claim({ claimer: "c", limit: 10, leaseMs: 10_000 });
      await store.ack(
        claimed.map((entry) => entry.id),
        { claimer: "c" },
      );
      return claimed.map((entry) => entry.id);
    };
    expect(await claim(), "the entries of other keys behind the stuck ones do not wait for them").toEqual([
      ids[0],
      ids[4],
      ids[5],
    ]);
    clock.advance(5_000);
    expect(await claim(), "a stuck ticket holds its entry while its lease time may still run").toEqual([]);
    clock.advance(5_000);
    // The dead claim's lease time has passed, and this store lost the tickets a lease time ago:
    // this claim loses them once more and frees them (a new state, a new ticket); the next takes them.
    expect(await claim(), "the claim that frees them has already passed them over").toEqual([]);
    expect(await claim(), "the stuck entries are freed together").toEqual(ids.slice(1, 4));
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
