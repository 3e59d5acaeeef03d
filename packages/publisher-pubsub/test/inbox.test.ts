// The Pub/Sub inbox helper's own logic on fake messages: the mapping of what the publisher writes to an inbox
// message, ack after commit, nack on failure (reported, never thrown), duplicates, dead letters, the hold-back of a
// failed key's later messages. The inbox is the real one on its in-memory store; the real broker and database are in
// inbox.e2e.test.ts.
import { makeEntry } from "@outbox/conformance";
import type { OutboxEntry } from "@outbox/core";
import { createInbox, type InboxMessage, MemoryInboxStore, type MemoryInboxTransaction } from "@outbox/inbox";
import { describe, expect, it } from "vitest";
import {
  inboxMessageFromPubSub,
  inboxMessageHandler,
  type PubSubInboxNackReason,
  type PubSubMessageLike,
} from "../src/inbox.js";
import { createPubSubPublisher, type PubSubMessage } from "../src/index.js";

/** What the publisher hands `topic.publishMessage` for `entries`, through a client that accepts everything. */
async function published(entries: OutboxEntry[], route?: (entry: OutboxEntry) => string): Promise<PubSubMessage[]> {
  const sent: PubSubMessage[] = [];
  const publisher = createPubSubPublisher({
    pubsub: {
      topic: () => ({
        publishMessage: async (message) => {
          sent.push(message);
          return `m${sent.length}`;
        },
        resumePublishing: () => undefined,
        flush: async () => undefined,
      }),
    },
    ...(route ? { topic: route } : {}),
  });
  const outcomes = await publisher.publish(entries);
  expect(outcomes.map((outcome) => outcome.status)).toEqual(entries.map(() => "published"));
  return sent;
}

/** Every ack and nack of the fake messages, in order: `<pubsub id>:<action>`. */
type Log = string[];

class FakeMessage implements PubSubMessageLike {
  readonly settled: Array<"ack" | "nack"> = [];
  constructor(
    readonly id: string,
    readonly data: Buffer,
    readonly attributes: Record<string, string>,
    readonly orderingKey: string,
    readonly log: Log,
  ) {}
  ack(): void {
    this.settled.push("ack");
    this.log.push(`${this.id}:ack`);
  }
  nack(): void {
    this.settled.push("nack");
    this.log.push(`${this.id}:nack`);
  }
}

let ids = 0;

/**
 * A delivery of `message` as @google-cloud/pubsub hands it to a "message" listener: Pub/Sub's id (the same on a
 * redelivery: pass `id`), the data, the attributes, and the ordering key ("" for none).
 */
function delivery(message: PubSubMessage, log: Log, id = `m${++ids}`): FakeMessage {
  return new FakeMessage(id, Buffer.from(message.data), { ...message.attributes }, message.orderingKey ?? "", log);
}

/** A delivery of what the publisher writes for one entry. */
async function deliveryOf(entry: OutboxEntry, log: Log): Promise<FakeMessage> {
  const [message] = await published([entry]);
  return delivery(message as PubSubMessage, log);
}

const redelivery = (message: FakeMessage): FakeMessage =>
  new FakeMessage(message.id, message.data, message.attributes, message.orderingKey, message.log);

function setup(
  handler: (tx: MemoryInboxTransaction, message: InboxMessage, pubsubMessage: FakeMessage) => Promise<unknown>,
  options: { maxAttempts?: number; holdBackMs?: number } = {},
) {
  const inbox = createInbox({ store: new MemoryInboxStore(), consumer: "unit", maxAttempts: options.maxAttempts ?? 5 });
  const log: Log = [];
  const results: string[] = [];
  const errors: Array<{ id: string; reason: PubSubInboxNackReason; error: unknown }> = [];
  const onMessage = inboxMessageHandler({
    inbox,
    handler,
    ...(options.holdBackMs === undefined ? {} : { holdBackMs: options.holdBackMs }),
    onResult: (result, message) => results.push(`${message.id}:${result.status}`),
    onError: (error, message, reason) => errors.push({ id: message.id, reason, error }),
  });
  return { inbox, log, results, errors, onMessage };
}

describe("inboxMessageFromPubSub", () => {
  it("reads the id, idempotency key, ordering key, payload and attributes the publisher writes", async () => {
    const entry = makeEntry({ topic: "orders.created", key: "customer-7", headers: { "content-type": "text/plain" } });
    const message = inboxMessageFromPubSub(await deliveryOf(entry, []));
    expect(message.id).toBe(entry.id);
    expect(message.idempotencyKey).toBe(entry.idempotencyKey);
    expect(message.key).toBe("customer-7");
    expect(message.topic).toBeNull();
    expect(message.payload).toEqual(entry.payload);
    expect(message.headers).toMatchObject({ "content-type": "text/plain" });
  });

  it("reads an empty ordering key (Pub/Sub's none) as no key, and the topic from outbox-topic when routed", async () => {
    const entry = makeEntry({ topic: "orders.created", key: null });
    const [sent] = await published([entry], () => "eu-orders");
    const pubsubMessage = delivery(sent as PubSubMessage, []);
    expect(pubsubMessage.orderingKey).toBe("");
    const message = inboxMessageFromPubSub(pubsubMessage);
    expect(message.key).toBeNull();
    expect(message.topic).toBe("orders.created");
  });

  it("falls back to pubsub:<message id> for a message without outbox attributes", () => {
    const message = inboxMessageFromPubSub(new FakeMessage("4711", Buffer.from("x"), { origin: "elsewhere" }, "", []));
    expect(message).toMatchObject({ id: "pubsub:4711", idempotencyKey: null, key: null, topic: null });
    expect(message.headers).toEqual({ origin: "elsewhere" });
  });
});

describe("inboxMessageHandler", () => {
  it("acks a message only after the handler's transaction committed, and a redelivery as a duplicate", async () => {
    const effects: string[] = [];
    let settledWhileRunning: string[] | undefined;
    const { log, results, onMessage } = setup(async (tx, message, pubsubMessage) => {
      settledWhileRunning = [...pubsubMessage.settled];
      tx.onCommit(() => {
        effects.push(message.idempotencyKey as string);
        log.push("commit");
      });
    });
    const entry = makeEntry({ topic: "t", key: "k" });
    const first = await deliveryOf(entry, log);
    await onMessage(first);
    expect(settledWhileRunning, "nothing acked while the handler ran").toEqual([]);
    expect(log).toEqual(["commit", `${first.id}:ack`]);
    expect(effects).toEqual([entry.idempotencyKey]);

    // Pub/Sub delivers it again (an ack lost, the ack deadline passed): the inbox skips it, the helper acks it.
    const again = redelivery(first);
    await onMessage(again);
    expect(again.settled).toEqual(["ack"]);
    expect(effects, "the handler did not run again").toHaveLength(1);
    expect(results).toEqual([`${first.id}:handled`, `${first.id}:duplicate`]);
  });

  it("nacks (never acks) a message whose handler fails, reports it to onError, and handles the redelivery", async () => {
    const failure = new Error("the handler fails once");
    let failures = 1;
    const effects: string[] = [];
    const { results, errors, onMessage } = setup(async (tx, message) => {
      if (failures-- > 0) throw failure;
      tx.onCommit(() => effects.push(message.idempotencyKey as string));
    });
    const entry = makeEntry({ topic: "t", key: "k" });
    const first = await deliveryOf(entry, []);
    await expect(onMessage(first), "the listener's promise never rejects").resolves.toBeUndefined();
    expect(first.settled).toEqual(["nack"]);
    expect(errors).toEqual([{ id: first.id, reason: "nacked", error: failure }]);
    expect(results, "no result for a nacked message").toEqual([]);
    expect(effects).toEqual([]);

    const again = redelivery(first);
    await onMessage(again);
    expect(again.settled).toEqual(["ack"]);
    expect(results).toEqual([`${first.id}:handled`]);
    expect(effects).toEqual([entry.idempotencyKey]);
  });

  it("acks a message once the inbox parked it in its dead letters", async () => {
    const { inbox, results, errors, onMessage } = setup(
      async () => {
        throw new Error("always fails");
      },
      { maxAttempts: 2 },
    );
    const entry = makeEntry({ topic: "t", key: "k" });
    const first = await deliveryOf(entry, []);
    await onMessage(first);
    expect(first.settled).toEqual(["nack"]);
    const again = redelivery(first);
    await onMessage(again);
    expect(again.settled).toEqual(["ack"]);
    expect(results).toEqual([`${first.id}:dead`]);
    expect(errors.map((e) => e.reason)).toEqual(["nacked"]);
    expect((await inbox.listDead()).map((dead) => dead.messageId)).toEqual([entry.idempotencyKey]);
  });

  it("nacks without running a message the inbox cannot take (an idempotency key with U+0000)", async () => {
    let ran = false;
    const { errors, onMessage } = setup(async () => {
      ran = true;
    });
    const message = new FakeMessage(
      "m-invalid",
      Buffer.from("x"),
      { "outbox-id": "1", "outbox-idempotency-key": "a\u0000b" },
      "k",
      [],
    );
    await onMessage(message);
    expect(message.settled).toEqual(["nack"]);
    expect(errors.map((e) => [e.reason, (e.error as { code?: string }).code])).toEqual([
      ["nacked", "OUTBOX_INVALID_ENTRY"],
    ]);
    expect(ran).toBe(false);
  });

  it("holds a failed key's later messages back until Pub/Sub redelivers the failed one; other keys go on", async () => {
    const handled: string[] = [];
    let failures = 1;
    const { errors, onMessage } = setup(async (tx, message) => {
      if (message.idempotencyKey === "a1" && failures-- > 0) throw new Error("a1 fails once");
      tx.onCommit(() => handled.push(message.idempotencyKey as string));
    });
    const entries = ["a1", "a2", "a3", "b1"].map((idempotencyKey) =>
      makeEntry({ topic: "t", key: idempotencyKey.slice(0, 1), idempotencyKey }),
    );
    const sent = await published(entries);
    const log: Log = [];
    // With ordering, Pub/Sub may hand over several messages of a key before the first is acked.
    const [a1, a2, a3, b1] = sent.map((message) => delivery(message, log)) as [
      FakeMessage,
      FakeMessage,
      FakeMessage,
      FakeMessage,
    ];
    await Promise.all([a1, a2, a3, b1].map((message) => onMessage(message)));
    expect([a1, a2, a3, b1].map((message) => message.settled)).toEqual([["nack"], ["nack"], ["nack"], ["ack"]]);
    expect(errors.map((e) => [e.id, e.reason])).toEqual([
      [a1.id, "nacked"],
      [a2.id, "held-back"],
      [a3.id, "held-back"],
    ]);
    expect(errors[1]?.error, "a held-back message reports the failure it waits behind").toBe(errors[0]?.error);
    expect(handled).toEqual(["b1"]);

    // A message of the key that is not the failed one stays held back until the failed one is back.
    const early = redelivery(a2);
    await onMessage(early);
    expect(early.settled).toEqual(["nack"]);

    // Pub/Sub redelivers the nacked message and the key's later ones, in order.
    const again = [redelivery(a1), redelivery(a2), redelivery(a3)];
    await Promise.all(again.map((message) => onMessage(message)));
    expect(again.map((message) => message.settled)).toEqual([["ack"], ["ack"], ["ack"]]);
    expect(handled).toEqual(["b1", "a1", "a2", "a3"]);
  });

  it("lets the key go on at once with holdBackMs 0", async () => {
    const handled: string[] = [];
    let failures = 1;
    const { onMessage } = setup(
      async (tx, message) => {
        if (failures-- > 0) throw new Error("fails once");
        tx.onCommit(() => handled.push(message.idempotencyKey as string));
      },
      { holdBackMs: 0 },
    );
    const sent = await published([
      makeEntry({ topic: "t", key: "a", idempotencyKey: "x1" }),
      makeEntry({ topic: "t", key: "a", idempotencyKey: "x2" }),
    ]);
    const [x1, x2] = sent.map((message) => delivery(message, [])) as [FakeMessage, FakeMessage];
    await Promise.all([onMessage(x1), onMessage(x2)]);
    expect([x1.settled, x2.settled]).toEqual([["nack"], ["ack"]]);
    expect(handled).toEqual(["x2"]);
  });

  it("runs different keys' handlers concurrently and one key's one at a time, in arrival order", async () => {
    const log: string[] = [];
    let releaseA1!: () => void;
    const a1Gate = new Promise<void>((resolve) => {
      releaseA1 = resolve;
    });
    const { onMessage } = setup(async (_tx, message) => {
      log.push(`start ${message.idempotencyKey}`);
      if (message.idempotencyKey === "a1") await a1Gate;
      log.push(`end ${message.idempotencyKey}`);
    });
    const sent = await published([
      makeEntry({ topic: "t", key: "a", idempotencyKey: "a1" }),
      makeEntry({ topic: "t", key: "b", idempotencyKey: "b1" }),
      makeEntry({ topic: "t", key: "a", idempotencyKey: "a2" }),
    ]);
    const [a1, b1, a2] = sent.map((message) => delivery(message, [])) as [FakeMessage, FakeMessage, FakeMessage];
    const running = [onMessage(a1), onMessage(b1), onMessage(a2)];
    await running[1];
    expect(b1.settled, "b1 is done while a1 still runs").toEqual(["ack"]);
    expect(log).not.toContain("start a2");
    releaseA1();
    await Promise.all(running);
    expect(log.indexOf("start a2")).toBeGreaterThan(log.indexOf("end a1"));
    expect([a1.settled, a2.settled]).toEqual([["ack"], ["ack"]]);
  });

  it("never rejects, even when the callbacks throw; the key goes on", async () => {
    const inbox = createInbox({ store: new MemoryInboxStore(), consumer: "unit" });
    let failures = 1;
    const onMessage = inboxMessageHandler({
      inbox,
      holdBackMs: 0,
      handler: async () => {
        if (failures-- > 0) throw new Error("fails once");
      },
      onResult: () => {
        throw new Error("callback bug");
      },
      onError: () => {
        throw new Error("callback bug");
      },
    });
    const sent = await published([makeEntry({ topic: "t", key: "k" }), makeEntry({ topic: "t", key: "k" })]);
    const [first, second] = sent.map((message) => delivery(message, [])) as [FakeMessage, FakeMessage];
    const warn = console.warn;
    console.warn = () => undefined;
    try {
      await expect(Promise.all([onMessage(first), onMessage(second)])).resolves.toEqual([undefined, undefined]);
    } finally {
      console.warn = warn;
    }
    expect([first.settled, second.settled]).toEqual([["nack"], ["ack"]]);
  });

  it("checks its options", () => {
    const inbox = createInbox({ store: new MemoryInboxStore() });
    expect(() => inboxMessageHandler({ inbox, handler: async () => undefined, holdBackMs: -1 })).toThrow(
      expect.objectContaining({ code: "OUTBOX_INVALID_OPTIONS" }),
    );
  });
});
