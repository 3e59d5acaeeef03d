import { ManualClock, type OutboxEntry, OutboxErrorCode, published, transientFailure } from "@outbox/core";
import { describe, expect, it } from "vitest";
import { MemoryLockBackend, MemoryPublisher, MemoryStore, MemoryTransaction } from "../src/index.js";

// The contracts are checked by the kit (packages/conformance/test/memory.test.ts runs every suite against these
// adapters); here, what only the in-memory adapters have: their transactions and the hooks tests drive them with.

const claimAll = (store: MemoryStore) => store.claim({ claimer: "test", limit: 10, leaseMs: 1_000 });

function entry(id: string, key: string | null, topic = "orders"): OutboxEntry {
  const at = new Date(0);
  return {
    id,
    topic,
    key,
    payload: new Uint8Array([1, 2, 3]),
    headers: { h: id },
    idempotencyKey: `idem-${id}`,
    createdAt: at,
    availableAt: at,
    attempts: 1,
    lastError: null,
  };
}

describe("MemoryStore", () => {
  it("makes a transaction's entries visible at commit, and none of a transaction that throws", async () => {
    const store = new MemoryStore({ clock: new ManualClock() });
    const failure = new Error("rolled back");
    await expect(
      store.transaction(async (tx) => {
        await store.enqueue(tx, { topic: "orders", payload: "lost" });
        throw failure;
      }),
    ).rejects.toBe(failure);
    await store.transaction((tx) => store.enqueue(tx, { topic: "orders", payload: "kept" }));
    expect((await claimAll(store)).map((claimed) => new TextDecoder().decode(claimed.payload))).toEqual(["kept"]);
  });

  it("assigns ids at enqueue but shows rows at commit: a lower id that commits late is claimed late", async () => {
    const store = new MemoryStore({ clock: new ManualClock() });
    let commitFirst = () => {};
    const first = store.transaction(async (tx) => {
      const ids = await store.enqueue(tx, { topic: "orders", payload: "first" });
      await new Promise<void>((resolve) => {
        commitFirst = resolve;
      });
      return ids;
    });
    const second = await store.transaction((tx) => store.enqueue(tx, { topic: "orders", payload: "second" }));
    expect((await claimAll(store)).map((claimed) => claimed.id)).toEqual(second);
    commitFirst();
    const firstIds = await first;
    expect((await claimAll(store)).map((claimed) => claimed.id)).toEqual(firstIds);
    expect(Number(firstIds[0])).toBeLessThan(Number(second[0]));
  });

  it("enqueues only in an open transaction of its own", async () => {
    const store = new MemoryStore();
    const finished = new MemoryTransaction();
    finished.finish();
    for (const tx of [finished, {} as MemoryTransaction]) {
      await expect(store.enqueue(tx, { topic: "orders", payload: "x" })).rejects.toMatchObject({
        code: OutboxErrorCode.InvalidOptions,
      });
    }
  });
});

describe("MemoryPublisher", () => {
  it("records copies of what it accepted, in order, by topic; the outcome hook decides each entry", async () => {
    const publisher = new MemoryPublisher({
      outcome: (e) => (e.id === "2" ? transientFailure(new Error("queue full")) : published()),
    });
    const sent = [entry("1", "a"), entry("2", "b"), entry("3", "a", "payments")];
    const outcomes = await publisher.publish(sent);
    expect(outcomes.map((outcome) => outcome.status)).toEqual(["published", "transient", "published"]);
    sent[0]?.payload.fill(0);
    expect(publisher.messages.map((message) => message.entryId)).toEqual(["1", "3"]);
    expect(publisher.topic("orders")).toEqual([
      {
        topic: "orders",
        key: "a",
        payload: new Uint8Array([1, 2, 3]),
        headers: { h: "1" },
        idempotencyKey: "idem-1",
        entryId: "1",
      },
    ]);
  });

  it("fails with OUTBOX_CLOSED once closed", async () => {
    const publisher = new MemoryPublisher();
    await publisher.close();
    await expect(publisher.publish([entry("1", null)])).rejects.toMatchObject({ code: OutboxErrorCode.Closed });
  });
});

describe("MemoryLockBackend", () => {
  it("keeps its fencing counter across restart(), throws while unreachable and once closed", async () => {
    const backend = new MemoryLockBackend({ clock: new ManualClock() });
    expect(await backend.tryAcquire("lock", "a", 1_000)).toBe(1n);
    expect(await backend.tryAcquire("lock", "b", 1_000)).toBeNull();
    backend.restart();
    expect(await backend.tryAcquire("lock", "b", 1_000)).toBe(2n);
    backend.setReachable(false);
    await expect(backend.renew("lock", "b", 1_000)).rejects.toMatchObject({ code: OutboxErrorCode.LockUnavailable });
    backend.setReachable(true);
    expect(await backend.renew("lock", "b", 1_000)).toBe(true);
    await backend.close();
    await expect(backend.release("lock", "b")).rejects.toMatchObject({ code: OutboxErrorCode.Closed });
  });
});
