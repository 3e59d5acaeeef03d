// The amqplib inbox helper's own logic on a fake channel: the mapping of a delivery to an inbox message, ack
// after commit, nack/requeue on failure, hold-back of a failed key's later deliveries, rejects. The inbox is the
// real one on its in-memory store; the real broker and database are in inbox.e2e.test.ts.
import { makeEntry } from "@outbox/conformance";
import type { OutboxEntry } from "@outbox/core";
import { createInbox, type InboxMessage, MemoryInboxStore, type MemoryInboxTransaction } from "@outbox/inbox";
import { waitFor } from "@outbox/test-support/wait";
import { describe, expect, it } from "vitest";
import {
  type AmqpDeliveryLike,
  type AmqpInboxNackReason,
  inboxMessageFromDelivery,
  inboxOnMessage,
} from "../src/inbox.js";
import { AmqpHeader, encodeMessage } from "../src/index.js";

interface Delivery extends AmqpDeliveryLike {
  readonly fields: { readonly routingKey: string; readonly redelivered: boolean; readonly deliveryTag: number };
}

let tags = 0;

/** The delivery amqplib hands a consumer for what the publisher sends for `entry`. */
function deliveryOf(entry: OutboxEntry, options: { routingKey?: string; redelivered?: boolean } = {}): Delivery {
  const encoded = encodeMessage(entry, options.routingKey ?? entry.topic, {
    maxMessageBytes: 1 << 20,
    maxPropertiesBytes: 65_536,
  });
  if (!("content" in encoded)) throw new Error(encoded.message);
  return {
    content: Buffer.from(encoded.content),
    fields: { routingKey: encoded.routingKey, redelivered: options.redelivered ?? false, deliveryTag: ++tags },
    properties: { messageId: encoded.options.messageId, headers: { ...encoded.options.headers } },
  };
}

type Settled = { tag: number; action: "ack" | "requeue" | "reject" };

class FakeChannel {
  readonly settled: Settled[] = [];
  closed = false;
  ack(message: Delivery): void {
    if (this.closed) throw new Error("Channel closed");
    this.settled.push({ tag: message.fields.deliveryTag, action: "ack" });
  }
  nack(message: Delivery, _allUpTo?: boolean, requeue = true): void {
    if (this.closed) throw new Error("Channel closed");
    this.settled.push({ tag: message.fields.deliveryTag, action: requeue ? "requeue" : "reject" });
  }
  actionOf(delivery: Delivery): Settled["action"][] {
    return this.settled.filter((s) => s.tag === delivery.fields.deliveryTag).map((s) => s.action);
  }
}

function setup(
  handler: (tx: MemoryInboxTransaction, message: InboxMessage, delivery: Delivery) => Promise<unknown>,
  options: { maxAttempts?: number; holdBackMs?: number } = {},
) {
  const channel = new FakeChannel();
  const inbox = createInbox({ store: new MemoryInboxStore(), consumer: "unit", maxAttempts: options.maxAttempts ?? 5 });
  const results: string[] = [];
  const errors: Array<{ reason: AmqpInboxNackReason; tag: number; error: unknown }> = [];
  const onMessage = inboxOnMessage({
    inbox,
    channel,
    handler,
    requeueDelayMs: 0,
    holdBackMs: options.holdBackMs ?? 5_000,
    onResult: (result, delivery) => results.push(`${delivery.fields.deliveryTag}:${result.status}`),
    onError: (error, delivery, reason) => errors.push({ reason, tag: delivery.fields.deliveryTag, error }),
  });
  return { channel, inbox, results, errors, onMessage };
}

const settledCount = (channel: FakeChannel, n: number) => () => channel.settled.length >= n;

describe("inboxMessageFromDelivery", () => {
  it("reads the id, idempotency key, key, topic, payload and headers the publisher writes", () => {
    const entry = makeEntry({ topic: "orders.created", key: "customer-7", headers: { "content-type": "text/plain" } });
    const message = inboxMessageFromDelivery(deliveryOf(entry));
    expect(message.id).toBe(entry.id);
    expect(message.idempotencyKey).toBe(entry.idempotencyKey);
    expect(message.key).toBe("customer-7");
    expect(message.topic).toBe("orders.created");
    expect(new TextDecoder().decode(message.payload as Uint8Array)).toBe(new TextDecoder().decode(entry.payload));
    expect(message.headers).toMatchObject({ "content-type": "text/plain", [AmqpHeader.Key]: "customer-7" });
  });

  it("takes the topic from outbox-topic when the routing key differs, and no key when the entry had none", () => {
    const entry = makeEntry({ topic: "orders.created" });
    const message = inboxMessageFromDelivery(deliveryOf(entry, { routingKey: "eu.orders" }));
    expect(message.topic).toBe("orders.created");
    expect(message.key).toBeNull();
  });

  it("falls back to the messageId property for foreign messages, renders other header types as text (JSON for tables and arrays)", () => {
    const message = inboxMessageFromDelivery({
      content: Buffer.from("x"),
      fields: { routingKey: "rk" },
      properties: { messageId: "m-1", headers: { n: 3, flag: true, bytes: Buffer.from("b"), list: ["a"] } },
    });
    expect(message).toMatchObject({ id: "m-1", idempotencyKey: null, key: null, topic: "rk" });
    expect(message.headers).toEqual({ n: "3", flag: "true", bytes: "b", list: '["a"]' });
  });

  it("fails with OUTBOX_INVALID_ENTRY without an outbox-id header or a messageId", () => {
    expect(() =>
      inboxMessageFromDelivery({ content: Buffer.alloc(0), fields: { routingKey: "rk" }, properties: {} }),
    ).toThrow(expect.objectContaining({ code: "OUTBOX_INVALID_ENTRY" }));
  });
});

describe("inboxOnMessage", () => {
  it("acks a delivery only after the handler's transaction committed, and a redelivery as a duplicate", async () => {
    const effects: string[] = [];
    let release!: () => void;
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    const { channel, results, onMessage } = setup(async (tx, message) => {
      await gate;
      tx.onCommit(() => effects.push(message.idempotencyKey as string));
    });
    const entry = makeEntry({ topic: "t", key: "k" });
    const first = deliveryOf(entry);
    onMessage(first);
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(channel.settled, "nothing acked while the handler runs").toEqual([]);
    release();
    await waitFor(settledCount(channel, 1), 2_000);
    expect(channel.actionOf(first)).toEqual(["ack"]);
    expect(effects).toEqual([entry.idempotencyKey]);

    const again = deliveryOf(entry, { redelivered: true });
    onMessage(again);
    await waitFor(settledCount(channel, 2), 2_000);
    expect(channel.actionOf(again)).toEqual(["ack"]);
    expect(effects, "the handler did not run again").toHaveLength(1);
    expect(results).toEqual([`${first.fields.deliveryTag}:handled`, `${again.fields.deliveryTag}:duplicate`]);
  });

  it("nacks a failed delivery with requeue, and acks it once the inbox parked it in the dead letters", async () => {
    const { channel, inbox, results, errors, onMessage } = setup(
      async () => {
        throw new Error("boom");
      },
      { maxAttempts: 2 },
    );
    const entry = makeEntry({ topic: "t", key: "k" });
    const first = deliveryOf(entry);
    onMessage(first);
    await waitFor(settledCount(channel, 1), 2_000);
    expect(channel.actionOf(first)).toEqual(["requeue"]);
    expect(errors.map((e) => [e.reason, (e.error as Error).message])).toEqual([["requeued", "boom"]]);

    const second = deliveryOf(entry, { redelivered: true });
    onMessage(second);
    await waitFor(settledCount(channel, 2), 2_000);
    expect(channel.actionOf(second)).toEqual(["ack"]);
    expect(results).toEqual([`${second.fields.deliveryTag}:dead`]);
    expect((await inbox.listDead()).map((d) => d.messageId)).toEqual([entry.idempotencyKey]);
  });

  it("holds a failed key's later deliveries back until the failed one is redelivered; other keys go on", async () => {
    const handled: string[] = [];
    let failures = 1;
    const { channel, errors, onMessage } = setup(async (tx, message) => {
      if (message.idempotencyKey === "a1" && failures-- > 0) throw new Error("a1 fails once");
      tx.onCommit(() => handled.push(message.idempotencyKey as string));
    });
    const [a1, a2, a3, b1] = [
      makeEntry({ topic: "t", key: "a", idempotencyKey: "a1" }),
      makeEntry({ topic: "t", key: "a", idempotencyKey: "a2" }),
      makeEntry({ topic: "t", key: "a", idempotencyKey: "a3" }),
      makeEntry({ topic: "t", key: "b", idempotencyKey: "b1" }),
    ];
    const first = [deliveryOf(a1), deliveryOf(a2), deliveryOf(a3), deliveryOf(b1)];
    for (const delivery of first) onMessage(delivery);
    await waitFor(settledCount(channel, 4), 2_000);
    expect(first.map((d) => channel.actionOf(d))).toEqual([["requeue"], ["requeue"], ["requeue"], ["ack"]]);
    expect(errors.map((e) => e.reason)).toEqual(["requeued", "held-back", "held-back"]);
    expect(handled).toEqual(["b1"]);

    // A delivery of the key that is not the failed one stays held back until the failed one is back.
    const early = deliveryOf(a2, { redelivered: true });
    onMessage(early);
    await waitFor(settledCount(channel, 5), 2_000);
    expect(channel.actionOf(early)).toEqual(["requeue"]);

    // RabbitMQ puts requeued messages back at their positions: a1, a2, a3 again, in order.
    const again = [deliveryOf(a1, { redelivered: true }), deliveryOf(a2, { redelivered: true }), deliveryOf(a3)];
    for (const delivery of again) onMessage(delivery);
    await waitFor(settledCount(channel, 8), 2_000);
    expect(again.map((d) => channel.actionOf(d))).toEqual([["ack"], ["ack"], ["ack"]]);
    expect(handled).toEqual(["b1", "a1", "a2", "a3"]);
  });

  it("shares the hold-back between the helpers of one inbox (a consumer replacing a closed channel's)", async () => {
    const inbox = createInbox({ store: new MemoryInboxStore(), consumer: "unit" });
    const handled: string[] = [];
    let failures = 1;
    const helper = (channel: FakeChannel) =>
      inboxOnMessage({
        inbox,
        channel,
        requeueDelayMs: 0,
        onError: () => undefined,
        handler: async (tx: MemoryInboxTransaction, message: InboxMessage) => {
          if (message.idempotencyKey === "s1" && failures-- > 0) throw new Error("s1 fails once");
          tx.onCommit(() => handled.push(message.idempotencyKey as string));
        },
      });
    const [first, second] = [new FakeChannel(), new FakeChannel()];
    const s1 = makeEntry({ topic: "t", key: "s", idempotencyKey: "s1" });
    const s2 = makeEntry({ topic: "t", key: "s", idempotencyKey: "s2" });
    helper(first)(deliveryOf(s1));
    await waitFor(settledCount(first, 1), 2_000);
    const onSecond = helper(second);
    const early = deliveryOf(s2);
    onSecond(early);
    await waitFor(settledCount(second, 1), 2_000);
    expect(second.actionOf(early), "s2 waits for s1, whichever channel it comes on").toEqual(["requeue"]);
    onSecond(deliveryOf(s1, { redelivered: true }));
    onSecond(deliveryOf(s2, { redelivered: true }));
    await waitFor(settledCount(second, 3), 2_000);
    expect(handled).toEqual(["s1", "s2"]);
  });

  it("lets the key go on when the failed delivery does not come back within holdBackMs", async () => {
    const handled: string[] = [];
    let failures = 1;
    const { channel, onMessage } = setup(
      async (tx, message) => {
        if (failures-- > 0) throw new Error("fails once");
        tx.onCommit(() => handled.push(message.idempotencyKey as string));
      },
      { holdBackMs: 30 },
    );
    onMessage(deliveryOf(makeEntry({ topic: "t", key: "a", idempotencyKey: "x1" })));
    await waitFor(settledCount(channel, 1), 2_000);
    await new Promise((resolve) => setTimeout(resolve, 60));
    const next = deliveryOf(makeEntry({ topic: "t", key: "a", idempotencyKey: "x2" }));
    onMessage(next);
    await waitFor(settledCount(channel, 2), 2_000);
    expect(channel.actionOf(next)).toEqual(["ack"]);
    expect(handled).toEqual(["x2"]);
  });

  it("runs different keys' handlers concurrently and one key's one at a time, in delivery order", async () => {
    const log: string[] = [];
    let running = 0;
    let most = 0;
    const { channel, onMessage } = setup(async (_tx, message) => {
      running += 1;
      most = Math.max(most, running);
      log.push(`start ${message.idempotencyKey}`);
      await new Promise((resolve) => setTimeout(resolve, 10));
      log.push(`end ${message.idempotencyKey}`);
      running -= 1;
    });
    for (const [key, idem] of [
      ["a", "a1"],
      ["b", "b1"],
      ["a", "a2"],
    ] as const) {
      onMessage(deliveryOf(makeEntry({ topic: "t", key, idempotencyKey: idem })));
    }
    await waitFor(settledCount(channel, 3), 2_000);
    expect(most).toBe(2);
    expect(log.indexOf("start a2")).toBeGreaterThan(log.indexOf("end a1"));
    expect(channel.settled.map((s) => s.action)).toEqual(["ack", "ack", "ack"]);
  });

  it("rejects (nack without requeue) a message with nothing to dedupe on; the handler never runs", async () => {
    let ran = false;
    const { channel, errors, onMessage } = setup(async () => {
      ran = true;
    });
    const foreign: Delivery = {
      content: Buffer.from("?"),
      fields: { routingKey: "rk", redelivered: false, deliveryTag: ++tags },
      properties: { headers: {} },
    };
    onMessage(foreign);
    expect(channel.actionOf(foreign)).toEqual(["reject"]);
    expect(errors.map((e) => [e.reason, (e.error as { code?: string }).code])).toEqual([
      ["rejected", "OUTBOX_INVALID_ENTRY"],
    ]);
    expect(ran).toBe(false);
  });

  it("reports an ack on a closed channel as unsettled (the broker redelivers it), and ignores a null delivery", async () => {
    const { channel, errors, results, onMessage } = setup(async () => undefined);
    onMessage(null);
    channel.closed = true;
    const delivery = deliveryOf(makeEntry({ topic: "t", key: "k" }));
    onMessage(delivery);
    await waitFor(() => errors.length >= 1, 2_000);
    expect(errors.map((e) => [e.reason, (e.error as Error).message])).toEqual([["unsettled", "Channel closed"]]);
    expect(results, "no result reported for an unacked delivery").toEqual([]);
  });

  it("keeps a key's chain going when a callback throws", async () => {
    const channel = new FakeChannel();
    const inbox = createInbox({ store: new MemoryInboxStore(), consumer: "unit" });
    const onMessage = inboxOnMessage({
      inbox,
      channel,
      handler: async () => undefined,
      onResult: () => {
        throw new Error("callback bug");
      },
    });
    const warn = console.warn;
    console.warn = () => undefined;
    try {
      onMessage(deliveryOf(makeEntry({ topic: "t", key: "k" })));
      onMessage(deliveryOf(makeEntry({ topic: "t", key: "k" })));
      await waitFor(settledCount(channel, 2), 2_000);
    } finally {
      console.warn = warn;
    }
    expect(channel.settled.map((s) => s.action)).toEqual(["ack", "ack"]);
  });

  it("checks its options", () => {
    const inbox = createInbox({ store: new MemoryInboxStore() });
    const channel = new FakeChannel();
    expect(() => inboxOnMessage({ inbox, channel, handler: async () => undefined, requeueDelayMs: -1 })).toThrow(
      expect.objectContaining({ code: "OUTBOX_INVALID_OPTIONS" }),
    );
  });
});
