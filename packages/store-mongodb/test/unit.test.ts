import { EventEmitter } from "node:events";
import { OutboxError, OutboxErrorCode } from "@outbox/core";
import { describe, expect, it } from "vitest";
import { createMongoStore } from "../src/index.js";
import { type Candidate, keepRuns, Selection } from "../src/select.js";
import { ChangeStreamWakeSource } from "../src/wake.js";
import { fakeReplicaSetClient } from "./helpers.js";

const entry = (seq: number, key: string | null, extra: Partial<Candidate> = {}): Candidate => ({
  seq,
  gen: 0,
  key,
  availableAt: 0,
  leaseUntil: null,
  leaseLock: null,
  leaseToken: null,
  ...extra,
});

describe("Selection (the claim's rule)", () => {
  it("takes heads, runs while claimable, null-key entries, up to the limit, in id order", () => {
    const s = new Selection(5, 100, undefined);
    s.walk([
      entry(1, "a"),
      entry(2, "b", { leaseUntil: 200 }), // b's head leased: b yields nothing
      entry(3, "a"),
      entry(4, null),
      entry(5, "b"),
      entry(6, "a", { availableAt: 150 }), // not available: a's run ends here
      entry(7, "a"),
      entry(8, null, { leaseUntil: 200 }),
      entry(9, "c"),
      entry(10, null),
    ]);
    expect(s.picked.map((e) => e.seq)).toEqual([1, 3, 4, 9, 10]);
    expect(s.full).toBe(true);
  });

  it("takeover only for an older token of the same lock; never an entry a newer token leased", () => {
    const fence = { lock: "L", token: 6n };
    const s = new Selection(10, 100, fence);
    s.walk([
      entry(1, null, { leaseUntil: 200, leaseLock: "L", leaseToken: 5n }),
      entry(2, null, { leaseUntil: 200, leaseLock: "L", leaseToken: 6n }),
      entry(3, null, { leaseUntil: 200, leaseLock: "M", leaseToken: 1n }),
      entry(4, null, { leaseUntil: 50, leaseLock: "L", leaseToken: 7n }),
      entry(5, null, { leaseUntil: 50 }),
    ]);
    expect(s.picked.map((e) => e.seq)).toEqual([1, 5]);
  });

  it("entries lost to another claimer close their key", () => {
    const s = new Selection(10, 100, undefined, new Set([1, 4]));
    s.walk([entry(1, "a"), entry(2, "a"), entry(3, "b"), entry(4, "b"), entry(5, "b")]);
    expect(s.picked.map((e) => e.seq)).toEqual([3]);
  });
});

describe("keepRuns (what a claim keeps of what it leased)", () => {
  it("keeps each key's leased prefix and every leased null-key entry; gives back what lies past a gap", () => {
    const candidates = [entry(1, "a"), entry(2, "a"), entry(3, "b"), entry(4, null), entry(5, "a"), entry(6, "b")];
    // a: 1 leased, 2 went to another claimer, so 5 must not be published before 2.
    expect(keepRuns(candidates, new Set([1, 3, 4, 5, 6]))).toEqual({ keep: [1, 3, 4, 6], giveBack: [5] });
    // A key whose head another claimer got keeps nothing of it.
    expect(keepRuns(candidates, new Set([2, 5, 7]))).toEqual({ keep: [], giveBack: [2, 5] });
  });
});

class FakeStream extends EventEmitter {
  closed = false;
  async close(): Promise<void> {
    this.closed = true;
  }
}

describe("ChangeStreamWakeSource", () => {
  it("a reopened stream wakes once at once and once more at its first resume token (when it has started)", async () => {
    const streams: FakeStream[] = [];
    let wakes = 0;
    const source = new ChangeStreamWakeSource(
      {
        open: () => {
          const stream = new FakeStream();
          streams.push(stream);
          return stream;
        },
        minBackoffMs: 1,
      },
      { onWake: () => wakes++, onError: () => undefined },
    );
    await source.start();
    streams[0]?.emit("resumeTokenChanged", {});
    expect(wakes).toBe(0); // the first stream: nothing to catch up with
    streams[0]?.emit("close");
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(streams).toHaveLength(2);
    expect(wakes).toBe(1);
    streams[1]?.emit("resumeTokenChanged", {});
    streams[1]?.emit("resumeTokenChanged", {});
    expect(wakes).toBe(2);
    await source.stop();
  });

  it("wakes on changes, reopens after an error and wakes once to catch up", async () => {
    const streams: FakeStream[] = [];
    const errors: OutboxError[] = [];
    let wakes = 0;
    const source = new ChangeStreamWakeSource(
      {
        open: () => {
          const stream = new FakeStream();
          streams.push(stream);
          return stream;
        },
        minBackoffMs: 1,
      },
      { onWake: () => wakes++, onError: (error) => errors.push(error) },
    );
    await source.start();
    streams[0]?.emit("change", { operationType: "insert" });
    expect(wakes).toBe(1);
    streams[0]?.emit("error", Object.assign(new Error("lost"), { name: "MongoNetworkError" }));
    expect(errors[0]?.code).toBe(OutboxErrorCode.StoreUnavailable);
    expect(streams[0]?.closed).toBe(true);
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(streams).toHaveLength(2);
    expect(wakes).toBe(2); // the catch-up wake-up
    await source.stop();
    expect(streams[1]?.closed).toBe(true);
  });
});

/** A MongoClient stand-in for a replica set: records the calls the store makes. */
function fakeReplicaSet(headToken: number) {
  const calls: Array<{ op: string; session: unknown }> = [];
  const session = {
    inTransaction: () => true,
    endSession: async () => undefined,
    withTransaction: async (work: () => Promise<unknown>) => {
      calls.push({ op: "withTransaction", session });
      await work();
    },
  };
  const collection = (name: string) => ({
    listIndexes: () => ({ toArray: async () => [] }),
    createIndexes: async () => [],
    updateOne: async (_f: unknown, _u: unknown, o: { session?: unknown }) => {
      calls.push({ op: `${name}.updateOne`, session: o?.session });
      return { modifiedCount: 1 };
    },
    findOne: async (_f: unknown, o: { session?: unknown }) => {
      calls.push({ op: `${name}.findOne`, session: o?.session });
      return { _id: "head:L", token: headToken };
    },
    updateMany: async (_f: unknown, _u: unknown, o: { session?: unknown }) => {
      calls.push({ op: `${name}.updateMany`, session: o?.session });
      return { matchedCount: 1, modifiedCount: 1 };
    },
  });
  return { client: fakeReplicaSetClient(collection, session), calls, session };
}

describe("replica-set code paths (driver API, no server)", () => {
  it("a fenced settle runs the fence check and its effect in one transaction", async () => {
    const { client, calls, session } = fakeReplicaSet(7);
    const store = createMongoStore({ client, db: "app", collection: "outbox" });
    await store.init();
    expect(store.capabilities).toEqual({ wakeUps: true, transactions: true, deadLetterFilters: true });
    await store.ack(["1"], { claimer: "c", fence: { lock: "L", token: 7n } });
    expect(calls.map((c) => c.op)).toEqual([
      "withTransaction",
      "outbox_fences.updateOne",
      "outbox_fences.findOne",
      "outbox.updateMany",
    ]);
    for (const call of calls.slice(1)) expect(call.session).toBe(session);
  });

  it("an older token is refused inside the transaction, before any effect", async () => {
    const { client, calls } = fakeReplicaSet(9);
    const store = createMongoStore({ client, db: "app", collection: "outbox" });
    const error = await store.ack(["1"], { claimer: "c", fence: { lock: "L", token: 7n } }).catch((e: unknown) => e);
    expect(OutboxError.is(error, OutboxErrorCode.Fenced)).toBe(true);
    expect((error as OutboxError).details).toEqual({ lock: "L", token: "7", newest: "9" });
    expect(calls.map((c) => c.op)).not.toContain("outbox.updateMany");
  });

  it("listDead with errorContains reads on past batches of entries that do not match: full pages, nothing skipped", async () => {
    // 2,500 dead entries, three of them timeouts: the page must hold matches found past the first
    // scan batch, and one requeued between the scan and the read of whole entries is left out.
    const rows = Array.from({ length: 2_500 }, (_, i) => ({
      _id: i + 1,
      topic: i % 2 === 0 ? "orders" : "billing",
      key: null,
      payload: new Uint8Array(0),
      headers: "{}",
      idempotencyKey: null,
      createdAt: new Date(0),
      availableAt: new Date(0),
      status: "dead",
      attempts: 3,
      lastError: [1_500, 1_700, 2_100, 2_499].includes(i + 1) ? `broker TIMEOUT #${i + 1}` : "boom",
    }));
    const finds: Array<Record<string, unknown>> = [];
    let requeueAfterScan: number | null = null;
    const num = (value: unknown) => Number(String(value));
    const matches = (row: Record<string, unknown>, filter: Record<string, unknown>) =>
      Object.entries(filter).every(([field, wanted]) => {
        const value = row[field];
        if (wanted !== null && typeof wanted === "object" && "$gt" in wanted) return num(value) > num(wanted.$gt);
        if (wanted !== null && typeof wanted === "object" && "$in" in wanted) {
          return (wanted.$in as unknown[]).map(num).includes(num(value));
        }
        return value === wanted;
      });
    const collection = () => ({
      listIndexes: () => ({ toArray: async () => [] }),
      createIndexes: async () => [],
      find: (filter: Record<string, unknown>, options: { limit?: number; projection?: Record<string, 1> } = {}) => {
        finds.push(filter);
        const whole = options.projection === undefined;
        if (whole && requeueAfterScan !== null) {
          const requeued = rows.find((row) => row._id === requeueAfterScan);
          if (requeued) requeued.status = "pending";
        }
        let found: Array<Record<string, unknown>> = rows.filter((row) => matches(row, filter));
        found.sort((a, b) => num(a._id) - num(b._id));
        if (options.limit !== undefined) found = found.slice(0, options.limit);
        const projection = options.projection;
        if (projection) found = found.map((row) => Object.fromEntries(Object.keys(projection).map((f) => [f, row[f]])));
        return { toArray: async () => found };
      },
    });
    const client = fakeReplicaSetClient(collection, {});
    const store = createMongoStore({ client, db: "app", collection: "outbox" });
    expect(store.capabilities.transactions).toBe(true);
    const ids = (entries: { id: string }[]) => entries.map((e) => e.id);

    expect(ids(await store.listDead({ errorContains: "timeout", limit: 2 }))).toEqual(["1500", "1700"]);
    expect(ids(await store.listDead({ errorContains: "timeout", limit: 2, after: "1700" }))).toEqual(["2100", "2499"]);
    expect(ids(await store.listDead({ errorContains: "timeout", limit: 2, after: "2499" }))).toEqual([]);
    // Equalities go to the server; the error text never does (no $regex: FerretDB filters those itself).
    finds.length = 0;
    expect(ids(await store.listDead({ topic: "billing", key: null, errorContains: "TIMEOUT" }))).toEqual([
      "1500",
      "1700",
      "2100",
    ]);
    expect(finds[0]).toEqual({ status: "dead", topic: "billing", key: null, _id: { $gt: 0 } });
    expect(JSON.stringify(finds)).not.toContain("$regex");
    // 1,500 is requeued between the scan and the read: the page goes on to the next match.
    requeueAfterScan = 1_500;
    expect(ids(await store.listDead({ errorContains: "timeout", limit: 2 }))).toEqual(["1700", "2100"]);
  });

  it("transactions mode: enqueue needs a session inside a transaction", async () => {
    const { client } = fakeReplicaSet(0);
    const store = createMongoStore({ client, db: "app" });
    const error = await store.enqueue(null, { topic: "t", payload: "x" }).catch((e: unknown) => e);
    expect(OutboxError.is(error, OutboxErrorCode.InvalidOptions)).toBe(true);
  });
});
