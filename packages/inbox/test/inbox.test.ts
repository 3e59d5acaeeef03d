import { ManualClock, OutboxError, OutboxHeader } from "@outbox/core";
import { describe, expect, it } from "vitest";
import {
  createInbox,
  type InboxStore,
  inboxMessageFrom,
  MemoryInboxStore,
  type MemoryInboxTransaction,
} from "../src/index.js";

const code = (error: unknown) => (OutboxError.is(error) ? error.code : error);

describe("inboxMessageFrom", () => {
  it("reads the outbox metadata headers, as text or bytes", () => {
    const bytes = new TextEncoder();
    const message = inboxMessageFrom({
      headers: {
        [OutboxHeader.Id]: bytes.encode("42"),
        [OutboxHeader.IdempotencyKey]: "order-7",
        [OutboxHeader.Topic]: ["orders.created"],
        "content-type": "application/json",
        absent: undefined,
      },
      key: bytes.encode("customer-7"),
      topic: "orders.created.v2",
      payload: "{}",
    });
    expect(message).toEqual({
      id: "42",
      idempotencyKey: "order-7",
      key: "customer-7",
      topic: "orders.created",
      payload: "{}",
      headers: {
        [OutboxHeader.Id]: "42",
        [OutboxHeader.IdempotencyKey]: "order-7",
        [OutboxHeader.Topic]: "orders.created",
        "content-type": "application/json",
      },
    });
  });

  it("falls back to fallbackId, and refuses a message with nothing to dedupe on", () => {
    expect(inboxMessageFrom({ headers: null, fallbackId: "p0:17" })).toMatchObject({ id: "p0:17", key: null });
    let caught: unknown;
    try {
      inboxMessageFrom({ headers: {} });
    } catch (error) {
      caught = error;
    }
    expect(code(caught)).toBe("OUTBOX_INVALID_ENTRY");
  });
});

describe("createInbox", () => {
  it("refuses bad options and bad messages with stable codes", async () => {
    const store = new MemoryInboxStore();
    expect(() => createInbox({ store: {} as InboxStore })).toThrow(
      expect.objectContaining({ code: "OUTBOX_INVALID_OPTIONS" }),
    );
    expect(() => createInbox({ store, maxAttempts: 0 })).toThrow(
      expect.objectContaining({ code: "OUTBOX_INVALID_OPTIONS" }),
    );
    expect(() => createInbox({ store, consumer: "" })).toThrow(
      expect.objectContaining({ code: "OUTBOX_INVALID_OPTIONS" }),
    );
    const inbox = createInbox({ store });
    const handler = async () => undefined;
    for (const bad of [{ id: "" }, { id: "x\u0000" }, { id: "x", idempotencyKey: "y".repeat(1025) }, null]) {
      await expect(inbox.handle(bad as never, handler)).rejects.toMatchObject({ code: "OUTBOX_INVALID_ENTRY" });
    }
    await expect(inbox.handle({ id: "x", key: 7 as never }, handler)).rejects.toMatchObject({
      code: "OUTBOX_INVALID_ENTRY",
    });
  });

  it("surfaces a store failure without counting an attempt", async () => {
    const inner = new MemoryInboxStore();
    let failures = 0;
    const store: InboxStore<MemoryInboxTransaction> = {
      ...bind(inner),
      record: async () => {
        throw new Error("connection lost");
      },
      recordFailure: async (failure) => {
        failures += 1;
        return inner.recordFailure(failure);
      },
    };
    const inbox = createInbox({ store });
    let ran = false;
    await expect(
      inbox.handle({ id: "m" }, async () => {
        ran = true;
      }),
    ).rejects.toThrow("connection lost");
    expect(ran).toBe(false);
    expect(failures).toBe(0);
  });

  it("rethrows the handler's error when counting the attempt fails, and reports it to onError", async () => {
    const inner = new MemoryInboxStore();
    const reported: unknown[] = [];
    const store: InboxStore<MemoryInboxTransaction> = {
      ...bind(inner),
      recordFailure: async () => {
        throw new Error("store down");
      },
    };
    const inbox = createInbox({ store, onError: (error) => reported.push(error) });
    const boom = new Error("boom");
    await expect(inbox.handle({ id: "m" }, () => Promise.reject(boom))).rejects.toBe(boom);
    expect(reported).toHaveLength(1);
  });

  it("handles keyless messages concurrently and keyed ones in call order; idle() waits for all", async () => {
    const inbox = createInbox({ store: new MemoryInboxStore(), clock: new ManualClock() });
    let concurrent = 0;
    let most = 0;
    const order: string[] = [];
    const slow = (name: string) => async () => {
      concurrent += 1;
      most = Math.max(most, concurrent);
      await new Promise((resolve) => setTimeout(resolve, 5));
      order.push(name);
      concurrent -= 1;
    };
    for (let i = 0; i < 4; i++) void inbox.handle({ id: `free-${i}` }, slow(`free-${i}`));
    for (let i = 0; i < 4; i++) void inbox.handle({ id: `k-${i}`, key: "k" }, slow(`k-${i}`));
    await inbox.idle();
    expect(order).toHaveLength(8);
    expect(most, "keyless messages run side by side").toBeGreaterThan(1);
    expect(order.filter((name) => name.startsWith("k-"))).toEqual(["k-0", "k-1", "k-2", "k-3"]);
  });

  it("purge() keeps keys for retentionMs by default", async () => {
    const clock = new ManualClock();
    const inbox = createInbox({ store: new MemoryInboxStore(), clock, retentionMs: 1000 });
    await inbox.handle({ id: "m" }, async () => undefined);
    clock.advance(999);
    expect(await inbox.purge()).toBe(0);
    clock.advance(2);
    expect(await inbox.purge()).toBe(1);
  });
});

function bind(inner: MemoryInboxStore): InboxStore<MemoryInboxTransaction> {
  return {
    capabilities: inner.capabilities,
    transaction: (work) => inner.transaction(work),
    record: (tx, record) => inner.record(tx, record),
    recordFailure: (failure) => inner.recordFailure(failure),
    deadLetter: (item) => inner.deadLetter(item),
    listDead: (consumer, options) => inner.listDead(consumer, options),
    requeueDead: (consumer, ids) => inner.requeueDead(consumer, ids),
    dropDead: (consumer, ids) => inner.dropDead(consumer, ids),
    purge: (request) => inner.purge(request),
    stats: (consumer) => inner.stats(consumer),
    close: () => inner.close(),
  };
}
