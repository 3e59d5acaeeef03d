import { Long } from "mongodb";
import { afterAll, describe, expect, it } from "vitest";
import { createMongoStore, type MongoStore } from "../src/index.js";
import { createClient, dropStore, freshCollection, mongoJavaUrl, mongoUrl, testDb } from "./helpers.js";

// What a claim costs, counted in the commands the store sends (not timed), on both servers.
// mongo-java-server leases with a compare-and-set update (as MongoDB would), reads the payloads
// back, and looks past its window by key heads. FerretDB 1.x arbitrates with tickets first, reads
// its window whole (it decodes every pending entry for any query anyway), so that it needs no
// read-back for it, and past the window reads the rest of the pending entries at once.
const servers = [
  {
    name: "FerretDB 1.24",
    url: mongoUrl,
    claim: ["find", "insert", "update"],
    // Window (all held), the rest at once, tickets, lease, read-back of the picks from past the window.
    frozen: ["find", "find", "insert", "update", "find"],
  },
  {
    name: "mongo-java-server 1.47",
    url: mongoJavaUrl,
    claim: ["find", "update", "find"],
    // Window (all held), one head per key, null-key entries, lease, read-back.
    frozen: ["find", "aggregate", "find", "update", "find"],
  },
];

const text = (payload: Uint8Array) => new TextDecoder().decode(payload);

describe.each(servers)("$name", ({ url, claim, frozen: frozenClaim }) => {
  const client = createClient({ monitorCommands: true }, url);
  const sent: string[] = [];
  client.on("commandStarted", (event) => sent.push(event.commandName));
  afterAll(() => client.close());

  /** The commands `work` sends, in order. */
  async function commandsOf<T>(work: () => Promise<T>): Promise<{ result: T; commands: string[] }> {
    sent.length = 0;
    const result = await work();
    return { result, commands: [...sent] };
  }

  async function withStore(work: (store: MongoStore) => Promise<void>): Promise<void> {
    const store = createMongoStore({ client, db: testDb, collection: freshCollection(), transactions: false });
    try {
      await store.init();
      await work(store);
    } finally {
      await store.close();
      await dropStore(client, store);
    }
  }

  it("enqueue is 2 commands, a claim 3, an ack 1", async () => {
    await withStore(async (store) => {
      const enqueued = await commandsOf(() =>
        store.enqueue(null, [
          { topic: "t", key: "a", payload: "a1" },
          { topic: "t", key: "a", payload: "a2" },
          { topic: "t", key: "b", payload: "b1" },
          { topic: "t", key: null, payload: "n1" },
        ]),
      );
      expect(enqueued.commands).toEqual(["findAndModify", "insert"]);
      const claimed = await commandsOf(() => store.claim({ claimer: "c", limit: 10, leaseMs: 60_000 }));
      expect(claimed.result.map((e) => text(e.payload))).toEqual(["a1", "a2", "b1", "n1"]);
      expect(claimed.commands).toEqual(claim);
      const acked = await commandsOf(() =>
        store.ack(
          claimed.result.map((e) => e.id),
          { claimer: "c" },
        ),
      );
      expect(acked.commands).toEqual(["update"]);
    });
  });

  it("an enqueue handed an id in use (a lost increment) takes another and never deletes the entry holding it", async () => {
    await withStore(async (store) => {
      const [first] = await store.enqueue(null, { topic: "t", key: "k", payload: "first" });
      // The counter goes back, as a lost $inc leaves it: the next reservation hands out `first` again.
      await client
        .db(testDb)
        .collection<{ _id: string; value: Long }>(store.names.sequence)
        .updateOne({ _id: "entries" }, { $set: { value: Long.fromNumber(Number(first) - 1) } });
      const [second] = await store.enqueue(null, { topic: "t", key: "k", payload: "second" });
      expect(second).not.toBe(first);
      const claimed = await store.claim({ claimer: "c", limit: 10, leaseMs: 60_000 });
      expect(claimed.map((e) => [e.id, text(e.payload)])).toEqual([
        [first, "first"],
        [second, "second"],
      ]);
    });
  });

  it("a frozen relay holding 2,000 keys with backlogs: the next claim takes the free keys in a fixed number of commands", async () => {
    await withStore(async (store) => {
      const held = 2_000;
      const heads = Array.from({ length: held }, (_, i) => ({ topic: "t", key: `held-${i}`, payload: "head" }));
      await store.enqueue(null, heads);
      // A backlog behind every held head, older than any free entry.
      await store.enqueue(
        null,
        heads.map((m) => ({ ...m, payload: "behind" })),
      );
      const frozen = await store.claim({ claimer: "frozen", limit: held, leaseMs: 600_000 });
      expect(frozen.length).toBe(held);
      expect(new Set(frozen.map((e) => text(e.payload)))).toEqual(new Set(["head"]));
      await store.enqueue(
        null,
        Array.from({ length: 40 }, (_, i) => ({ topic: "t", key: `free-${i}`, payload: `free-${i}` })),
      );
      const live = await commandsOf(() => store.claim({ claimer: "live", limit: 32, leaseMs: 60_000 }));
      expect(live.result.map((e) => text(e.payload))).toEqual(Array.from({ length: 32 }, (_, i) => `free-${i}`));
      // Not a page per blocked key: a fixed number of commands.
      expect(live.commands).toEqual(frozenClaim);
    });
  }, 120_000);
});
