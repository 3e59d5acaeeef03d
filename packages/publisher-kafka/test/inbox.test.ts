// The kafkajs inbox helpers' own logic on fake payloads: the mapping of a record to an inbox message, and for
// eachBatch the order of handle / resolveOffset / commitOffsetsIfNecessary / heartbeat, what stays unresolved after
// a failure, a stop, a seek or a rebalance, and the options. The inbox is the real one on its in-memory store; the
// real broker and database are in inbox.e2e.test.ts and inbox-batch.e2e.test.ts.
import { makeEntry } from "@outbox/conformance";
import type { OutboxEntry } from "@outbox/core";
import {
  createInbox,
  type HandleResult,
  type InboxMessage,
  MemoryInboxStore,
  type MemoryInboxTransaction,
} from "@outbox/inbox";
import type { ConsumerRunConfig, EachBatchPayload, EachMessagePayload } from "kafkajs";
import { describe, expect, it, vi } from "vitest";
import {
  inboxEachBatch,
  inboxEachMessage,
  inboxMessageFromKafka,
  type KafkaBatchRecord,
  type KafkaEachBatchPayloadLike,
  type KafkaEachMessagePayloadLike,
  KafkaInboxRetryError,
  type KafkaMessageLike,
} from "../src/inbox.js";
import { createKafkaPublisher, type KafkaMessage, type KafkaProducerBatch } from "../src/index.js";

const TOPIC = "orders.created";

interface ConsumedMessage extends KafkaMessageLike {
  readonly key: Buffer | null;
  readonly value: Buffer | null;
  readonly headers: Record<string, Buffer>;
}

const bytes = (value: Buffer | string | null | undefined): Buffer | null =>
  value === null || value === undefined ? null : Buffer.from(value);

/** What a kafkajs consumer reads back (Buffers, string offsets) for what the publisher sends for `entries`. */
async function consumed(entries: OutboxEntry[], firstOffset = 0): Promise<ConsumedMessage[]> {
  const sent: KafkaMessage[] = [];
  const publisher = createKafkaPublisher({
    producer: {
      connect: async () => {},
      disconnect: async () => {},
      sendBatch: async (batch: KafkaProducerBatch) => {
        for (const { messages } of batch.topicMessages ?? []) sent.push(...messages);
        return [];
      },
    },
  });
  const outcomes = await publisher.publish(entries);
  expect(outcomes.map((outcome) => outcome.status)).toEqual(entries.map(() => "published"));
  await publisher.close();
  return sent.map((message, index) => ({
    key: bytes(message.key),
    value: bytes(message.value),
    offset: String(firstOffset + index),
    headers: Object.fromEntries(
      Object.entries(message.headers ?? {}).map(([name, value]) => [name, Buffer.from(String(value))]),
    ),
  }));
}

/** kafkajs's eachBatch payload for one partition, recording every call the helper makes on it. */
class FakeBatchPayload implements KafkaEachBatchPayloadLike {
  readonly batch: { readonly topic: string; readonly partition: number; readonly messages: ConsumedMessage[] };
  readonly calls: string[] = [];
  readonly resolved: string[] = [];
  running = true;
  stale = false;
  /** Runs before each resolveOffset / heartbeat is recorded (to stop or seek mid-batch, or fail a heartbeat). */
  onResolve: (offset: string) => void = () => {};
  onHeartbeat: () => void = () => {};

  constructor(messages: ConsumedMessage[], partition = 0) {
    this.batch = { topic: TOPIC, partition, messages };
  }

  resolveOffset(offset: string): void {
    this.calls.push(`resolve:${offset}`);
    this.resolved.push(offset);
    this.onResolve(offset);
  }
  async commitOffsetsIfNecessary(): Promise<void> {
    this.calls.push("commitOffsetsIfNecessary");
  }
  async heartbeat(): Promise<void> {
    this.calls.push("heartbeat");
    this.onHeartbeat();
  }
  isRunning(): boolean {
    return this.running;
  }
  isStale(): boolean {
    return this.stale;
  }
}

type Handler = (
  tx: MemoryInboxTransaction,
  message: InboxMessage,
  record: KafkaBatchRecord<ConsumedMessage>,
) => Promise<unknown>;

function setupBatch(handler: Handler, options: { maxAttempts?: number; store?: MemoryInboxStore } = {}) {
  const store = options.store ?? new MemoryInboxStore();
  const inbox = createInbox({ store, consumer: "unit", maxAttempts: options.maxAttempts ?? 5 });
  const results: string[] = [];
  const eachBatch = inboxEachBatch<MemoryInboxTransaction, FakeBatchPayload>({
    inbox,
    handler,
    onResult: (result, record) => results.push(`${record.message.offset}:${result.status}`),
  });
  return { inbox, store, results, eachBatch };
}

const seqOf = (message: InboxMessage) => new TextDecoder().decode(message.payload as Uint8Array);

/** Entries e-0 .. e-(n-1), key k<i % keys>, payload "<i>". */
const entries = (n: number, keys = 2) =>
  Array.from({ length: n }, (_, i) =>
    makeEntry({
      topic: TOPIC,
      key: `k${i % keys}`,
      payload: new TextEncoder().encode(String(i)),
      idempotencyKey: `e-${i}`,
    }),
  );

describe("inboxMessageFromKafka", () => {
  it("reads the id, idempotency key, key, topic, payload and headers the publisher writes", async () => {
    const entry = makeEntry({ topic: TOPIC, key: "customer-7", headers: { "content-type": "text/plain" } });
    const [message] = await consumed([entry]);
    const received = inboxMessageFromKafka({ topic: TOPIC, partition: 2, message: message as ConsumedMessage });
    expect(received.id).toBe(entry.id);
    expect(received.idempotencyKey).toBe(entry.idempotencyKey);
    expect(received.key).toBe("customer-7");
    expect(received.topic).toBe(TOPIC);
    expect(new Uint8Array(received.payload as Uint8Array)).toEqual(new Uint8Array(entry.payload));
    expect(received.headers).toMatchObject({ "content-type": "text/plain" });
  });

  it("falls back to topic:partition:offset for a foreign message, and no key for a null key", () => {
    const received = inboxMessageFromKafka({
      topic: "raw",
      partition: 1,
      message: { key: null, value: Buffer.from("x"), offset: "42", headers: {} },
    });
    expect(received).toMatchObject({ id: "raw:1:42", idempotencyKey: null, key: null, topic: "raw" });
  });
});

describe("inboxEachBatch", () => {
  it("handles the batch in offset order, resolving each offset only after its transaction committed", async () => {
    const payload = new FakeBatchPayload(await consumed(entries(4), 100));
    const { results, eachBatch } = setupBatch(async (tx, message, record) => {
      payload.calls.push(`handle:${record.message.offset}`);
      tx.onCommit(() => payload.calls.push(`tx-commit:${seqOf(message)}`));
      expect(record).toMatchObject({ topic: TOPIC, partition: 0 });
    });
    await eachBatch(payload);
    const perMessage = (offset: number, seq: number) => [
      `handle:${offset}`,
      `tx-commit:${seq}`,
      `resolve:${offset}`,
      "commitOffsetsIfNecessary",
      "heartbeat",
    ];
    expect(payload.calls).toEqual([100, 101, 102, 103].flatMap((offset, seq) => perMessage(offset, seq)));
    expect(results).toEqual(["100:handled", "101:handled", "102:handled", "103:handled"]);
  });

  it("resolves duplicates without running the handler, and a redelivered batch as duplicates", async () => {
    const messages = await consumed(entries(3));
    const effects: string[] = [];
    const { results, eachBatch } = setupBatch(async (tx, message) => {
      tx.onCommit(() => effects.push(seqOf(message)));
    });
    await eachBatch(new FakeBatchPayload(messages.slice(0, 2)));
    const again = new FakeBatchPayload(messages);
    await eachBatch(again);
    expect(effects).toEqual(["0", "1", "2"]);
    expect(again.resolved).toEqual(["0", "1", "2"]);
    expect(results).toEqual(["0:handled", "1:handled", "0:duplicate", "1:duplicate", "2:handled"]);
  });

  it("on a handler failure: rethrows, resolves nothing from the failed offset on, and handles it first when kafkajs fetches again", async () => {
    const messages = await consumed(entries(5));
    const effects: string[] = [];
    const failure = new Error("handler failed");
    let failOnce = true;
    const ran: string[] = [];
    const { results, eachBatch } = setupBatch(async (tx, message) => {
      ran.push(seqOf(message));
      if (seqOf(message) === "2" && failOnce) {
        failOnce = false;
        throw failure;
      }
      tx.onCommit(() => effects.push(seqOf(message)));
    });
    const first = new FakeBatchPayload(messages);
    await expect(eachBatch(first)).rejects.toBe(failure);
    expect(first.resolved).toEqual(["0", "1"]);
    expect(first.calls.at(-1)).toBe("heartbeat"); // nothing called after the failure
    expect(ran).toEqual(["0", "1", "2"]); // nothing after the failed message ran
    expect(effects).toEqual(["0", "1"]);

    // kafkajs fetches the partition again from the first unresolved offset.
    const retry = new FakeBatchPayload(messages.slice(2));
    await eachBatch(retry);
    expect(retry.resolved).toEqual(["2", "3", "4"]);
    expect(effects).toEqual(["0", "1", "2", "3", "4"]);
    expect(results).toEqual(["0:handled", "1:handled", "2:handled", "3:handled", "4:handled"]);
  });

  it("on a store failure: rethrows it and leaves the offset unresolved, without counting an attempt", async () => {
    const store = new MemoryInboxStore();
    const messages = await consumed(entries(3));
    const outage = new Error("store down");
    const record = store.record.bind(store);
    let failures = 1;
    vi.spyOn(store, "record").mockImplementation(async (tx, recorded) => {
      if (recorded.messageId === "e-1" && failures-- > 0) throw outage;
      return record(tx, recorded);
    });
    const { results, eachBatch } = setupBatch(async () => {}, { store, maxAttempts: 1 });
    const first = new FakeBatchPayload(messages);
    await expect(eachBatch(first)).rejects.toBe(outage);
    expect(first.resolved).toEqual(["0"]);
    const retry = new FakeBatchPayload(messages.slice(1));
    await eachBatch(retry);
    expect(retry.resolved).toEqual(["1", "2"]);
    // maxAttempts 1 would have parked it, had the store failure counted as an attempt.
    expect(results).toEqual(["0:handled", "1:handled", "2:handled"]);
  });

  it("hands kafkajs the errors it would not retry (TypeError & co., retriable: false, non-Errors) wrapped, as their cause", async () => {
    const messages = await consumed(entries(1));
    const thrown: unknown[] = [
      new TypeError("payload.order is undefined"),
      new SyntaxError("Unexpected token"),
      new RangeError("Invalid array length"),
      new ReferenceError("x is not defined"),
      Object.assign(new Error("a non-retriable one"), { retriable: false }),
      "a string",
    ];
    for (const error of thrown) {
      const { eachBatch } = setupBatch(async () => {
        throw error;
      });
      const payload = new FakeBatchPayload(messages);
      const rejection = await eachBatch(payload).then(
        () => null,
        (reason: unknown) => reason,
      );
      expect(rejection).toBeInstanceOf(KafkaInboxRetryError);
      expect(rejection).toMatchObject({ name: "KafkaInboxRetryError", retriable: true, cause: error });
      expect(payload.resolved).toEqual([]);
    }
    // Other errors (retriable in kafkajs's eyes) reach it as they are.
    const plain = Object.assign(new Error("deadlock detected"), { code: "40P01" });
    const { eachBatch } = setupBatch(async () => {
      throw plain;
    });
    await expect(eachBatch(new FakeBatchPayload(messages))).rejects.toBe(plain);
  });

  it("resolves a message the inbox parked in its dead letters and goes on with the batch", async () => {
    const messages = await consumed(entries(3));
    const effects: string[] = [];
    const { inbox, results, eachBatch } = setupBatch(
      async (tx, message) => {
        if (seqOf(message) === "1") throw new Error("poison");
        tx.onCommit(() => effects.push(seqOf(message)));
      },
      { maxAttempts: 1 },
    );
    const payload = new FakeBatchPayload(messages);
    await eachBatch(payload);
    expect(payload.resolved).toEqual(["0", "1", "2"]);
    expect(results).toEqual(["0:handled", "1:dead", "2:handled"]);
    expect(effects).toEqual(["0", "2"]);
    expect((await inbox.listDead()).map((dead) => dead.messageId)).toEqual(["e-1"]);
  });

  it("stops without resolving the rest when the consumer stops mid-batch (isRunning false)", async () => {
    const payload = new FakeBatchPayload(await consumed(entries(5)));
    const ran: string[] = [];
    const { eachBatch } = setupBatch(async (_tx, message) => {
      ran.push(seqOf(message));
    });
    payload.onResolve = (offset) => {
      if (offset === "1") payload.running = false;
    };
    await eachBatch(payload);
    expect(ran).toEqual(["0", "1"]);
    expect(payload.resolved).toEqual(["0", "1"]);
  });

  it("stops without resolving the rest when the batch goes stale (a seek) mid-batch", async () => {
    const payload = new FakeBatchPayload(await consumed(entries(5)));
    const ran: string[] = [];
    const { eachBatch } = setupBatch(async (_tx, message) => {
      ran.push(seqOf(message));
    });
    payload.onResolve = (offset) => {
      if (offset === "2") payload.stale = true;
    };
    await eachBatch(payload);
    expect(ran).toEqual(["0", "1", "2"]);
    expect(payload.resolved).toEqual(["0", "1", "2"]);
  });

  it("handles nothing of a batch handed over while the consumer is stopping or the batch is stale", async () => {
    const ran: string[] = [];
    const { eachBatch } = setupBatch(async (_tx, message) => {
      ran.push(seqOf(message));
    });
    const stopping = new FakeBatchPayload(await consumed(entries(2)));
    stopping.running = false;
    await eachBatch(stopping);
    const stale = new FakeBatchPayload(await consumed(entries(2)));
    stale.stale = true;
    await eachBatch(stale);
    expect(ran).toEqual([]);
    expect([...stopping.calls, ...stale.calls]).toEqual([]);
  });

  it("lets a failed heartbeat (a rebalance) reach kafkajs after resolving the message, and handles no more", async () => {
    const payload = new FakeBatchPayload(await consumed(entries(4)));
    const ran: string[] = [];
    const { eachBatch } = setupBatch(async (_tx, message) => {
      ran.push(seqOf(message));
    });
    const rebalancing = Object.assign(new Error("The group is rebalancing"), { type: "REBALANCE_IN_PROGRESS" });
    let heartbeats = 0;
    payload.onHeartbeat = () => {
      if (++heartbeats === 2) throw rebalancing;
    };
    await expect(eachBatch(payload)).rejects.toBe(rebalancing);
    expect(ran).toEqual(["0", "1"]);
    expect(payload.resolved).toEqual(["0", "1"]);
  });

  it("keeps the partition's order when the inbox runs handlers of other partitions concurrently", async () => {
    const messages = await consumed(entries(6, 3));
    const effects: string[] = [];
    let release!: () => void;
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    const { eachBatch } = setupBatch(async (tx, message, record) => {
      // Partition 0 waits on its first message until partition 1 finished its batch.
      if (record.partition === 0 && seqOf(message) === "0") await gate;
      tx.onCommit(() => effects.push(`${record.partition}:${seqOf(message)}`));
    });
    const p0 = new FakeBatchPayload([messages[0], messages[3]] as ConsumedMessage[], 0);
    const p1 = new FakeBatchPayload([messages[1], messages[4]] as ConsumedMessage[], 1);
    const first = eachBatch(p0);
    await eachBatch(p1);
    release();
    await first;
    expect(effects).toEqual(["1:1", "1:4", "0:0", "0:3"]);
  });

  it("reports an onResult that throws and goes on with the batch", async () => {
    const warn = vi.spyOn(console, "warn").mockImplementation(() => {});
    try {
      const inbox = createInbox({ store: new MemoryInboxStore(), consumer: "unit" });
      const eachBatch = inboxEachBatch({
        inbox,
        handler: async () => {},
        onResult: () => {
          throw new Error("callback bug");
        },
      });
      const payload = new FakeBatchPayload(await consumed(entries(3)));
      await eachBatch(payload);
      expect(payload.resolved).toEqual(["0", "1", "2"]);
      expect(warn).toHaveBeenCalledTimes(3);
    } finally {
      warn.mockRestore();
    }
  });

  it("refuses unusable options and a payload that is not kafkajs's eachBatch one with OUTBOX_INVALID_OPTIONS", async () => {
    const inbox = createInbox({ store: new MemoryInboxStore() });
    const handler = async () => {};
    const invalid = (option: string) =>
      expect.objectContaining({ code: "OUTBOX_INVALID_OPTIONS", details: { option } });
    const make = (options: unknown) => () => inboxEachBatch(options as Parameters<typeof inboxEachBatch>[0]);
    expect(make(undefined)).toThrow(invalid("options"));
    expect(make({ handler })).toThrow(invalid("inbox"));
    expect(make({ inbox: {}, handler })).toThrow(invalid("inbox"));
    expect(make({ inbox })).toThrow(invalid("handler"));
    expect(make({ inbox, handler: "no" })).toThrow(invalid("handler"));
    expect(make({ inbox, handler, onResult: 1 })).toThrow(invalid("onResult"));

    // An eachMessage payload handed to the eachBatch callback (consumer.run({ eachMessage: inboxEachBatch(...) })).
    const eachBatch = inboxEachBatch({ inbox, handler }) as unknown as (payload: unknown) => Promise<void>;
    const [message] = await consumed(entries(1));
    await expect(eachBatch({ topic: TOPIC, partition: 0, message })).rejects.toMatchObject({
      code: "OUTBOX_INVALID_OPTIONS",
      details: { option: "eachBatch" },
    });
  });
});

describe("inboxEachMessage", () => {
  it("commits the next offset only after the handler's transaction committed; a failure commits nothing", async () => {
    const calls: string[] = [];
    const inbox = createInbox({ store: new MemoryInboxStore(), consumer: "unit" });
    let fail = true;
    const results: string[] = [];
    const eachMessage = inboxEachMessage({
      inbox,
      consumer: {
        commitOffsets: async (offsets) => {
          calls.push(`commitOffsets:${offsets.map((o) => `${o.topic}/${o.partition}/${o.offset}`).join(",")}`);
        },
      },
      handler: async (tx: MemoryInboxTransaction, message) => {
        if (fail) {
          fail = false;
          throw new Error("once");
        }
        tx.onCommit(() => calls.push(`commit:${seqOf(message)}`));
      },
      onResult: (result) => results.push(result.status),
    });
    const [message] = await consumed(entries(1), 9);
    const payload = { topic: TOPIC, partition: 1, message: message as ConsumedMessage };
    await expect(eachMessage(payload)).rejects.toMatchObject({ message: "once" });
    expect(calls).toEqual([]);
    await eachMessage(payload);
    await eachMessage(payload);
    expect(calls).toEqual([`commit:0`, `commitOffsets:${TOPIC}/1/10`, `commitOffsets:${TOPIC}/1/10`]);
    expect(results).toEqual(["handled", "duplicate"]);
  });

  it("hands kafkajs a TypeError of the handler wrapped, so that it retries instead of stopping the consumer", async () => {
    const typeError = new TypeError("cannot read properties of undefined");
    const commits: unknown[] = [];
    const eachMessage = inboxEachMessage({
      inbox: createInbox({ store: new MemoryInboxStore() }),
      consumer: { commitOffsets: async (offsets) => void commits.push(offsets) },
      handler: async () => {
        throw typeError;
      },
    });
    const [message] = await consumed(entries(1));
    await expect(
      eachMessage({ topic: TOPIC, partition: 0, message: message as ConsumedMessage }),
    ).rejects.toMatchObject({
      name: "KafkaInboxRetryError",
      cause: typeError,
    });
    expect(commits).toEqual([]);
  });

  it("refuses unusable options with OUTBOX_INVALID_OPTIONS", () => {
    const inbox = createInbox({ store: new MemoryInboxStore() });
    const handler = async () => {};
    const consumer = { commitOffsets: async () => {} };
    const invalid = (option: string) =>
      expect.objectContaining({ code: "OUTBOX_INVALID_OPTIONS", details: { option } });
    const make = (options: unknown) => () => inboxEachMessage(options as Parameters<typeof inboxEachMessage>[0]);
    expect(make({ consumer, handler })).toThrow(invalid("inbox"));
    expect(make({ inbox, consumer })).toThrow(invalid("handler"));
    expect(make({ inbox, handler })).toThrow(invalid("consumer"));
    expect(make({ inbox, handler, consumer: {} })).toThrow(invalid("consumer"));
    expect(make({ inbox, handler, consumer, onResult: "x" })).toThrow(invalid("onResult"));
  });
});

describe("types", () => {
  it("fit kafkajs's consumer.run() config, with one handler for both helpers", () => {
    const inbox = createInbox({ store: new MemoryInboxStore() });
    // A handler typed on the eachMessage payload shape serves eachBatch too.
    const handler = async (_tx: MemoryInboxTransaction, _message: InboxMessage, record: KafkaEachMessagePayloadLike) =>
      record.message.offset;
    const onResult = (_result: HandleResult<unknown>, _record: KafkaEachMessagePayloadLike) => {};
    const consumer = { commitOffsets: async () => {} };
    const batchConfig: ConsumerRunConfig = {
      eachBatchAutoResolve: false,
      eachBatch: inboxEachBatch({ inbox, handler, onResult }),
    };
    const messageConfig: ConsumerRunConfig = {
      autoCommit: false,
      eachMessage: inboxEachMessage({ inbox, consumer, handler }),
    };
    // Inferred from kafkajs's payload types: the record's message is kafkajs's KafkaMessage.
    const inferred: (payload: EachBatchPayload) => Promise<void> = inboxEachBatch({
      inbox,
      handler: async (_tx, _message, record) => record.message.timestamp,
    });
    const inferredMessage: (payload: EachMessagePayload) => Promise<void> = inboxEachMessage({
      inbox,
      consumer,
      handler: async (_tx, _message, payload) => payload.message.timestamp,
    });
    expect([batchConfig, messageConfig, inferred, inferredMessage].length).toBe(4);
  });
});
