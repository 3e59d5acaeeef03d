// Publisher behaviour against a scripted in-process producer: no broker needed.
import { makeEntry } from "@outbox/conformance";
import { OutboxError, OutboxErrorCode, OutboxHeader, type PublishOutcome } from "@outbox/core";
import { KafkaJSConnectionError, KafkaJSNumberOfRetriesExceeded, KafkaJSProtocolError, Partitioners } from "kafkajs";
import { describe, expect, it } from "vitest";
import {
  createKafkaPublisher,
  createOutboxPartitioner,
  estimateRecordBytes,
  type KafkaMessage,
  type KafkaProducerBatch,
  type KafkaProducerConfig,
  type KafkaProducerLike,
  murmur2,
} from "../src/index.js";

const protocolError = (type: string, code: number, retriable: boolean) =>
  new KafkaJSProtocolError({ type, code, retriable, message: type } as never);

const partitionMetadata = [0, 1, 2].map((partitionId) => ({
  partitionId,
  leader: 1,
  replicas: [1],
  isr: [1],
  offlineReplicas: [],
  partitionErrorCode: 0,
}));

type Behaviour = (batch: KafkaProducerBatch, producer: FakeProducer) => void | Promise<void>;

class FakeProducer implements KafkaProducerLike {
  readonly batches: KafkaProducerBatch[] = [];
  connects = 0;
  disconnects = 0;
  readonly events = { DISCONNECT: "producer.disconnect" };
  readonly #listeners: Array<(event: unknown) => void> = [];
  readonly #partition: ((message: KafkaMessage, topic: string) => number) | null;

  constructor(
    public behave: Behaviour,
    config?: KafkaProducerConfig,
  ) {
    const partitioner = config?.createPartitioner?.() ?? null;
    this.#partition = partitioner
      ? (message, topic) =>
          partitioner({ topic, partitionMetadata, message: message as Parameters<typeof partitioner>[0]["message"] })
      : null;
  }

  async connect(): Promise<void> {
    this.connects += 1;
  }
  async disconnect(): Promise<void> {
    this.disconnects += 1;
    for (const listener of this.#listeners) listener({});
  }
  on(_event: "producer.disconnect", listener: (event: unknown) => void): () => void {
    this.#listeners.push(listener);
    return () => this.#listeners.splice(this.#listeners.indexOf(listener), 1);
  }
  async sendBatch(batch: KafkaProducerBatch): Promise<unknown> {
    // Like kafkajs: the partitioner runs before the request is sent.
    for (const { topic, messages } of batch.topicMessages ?? []) {
      for (const message of messages) this.#partition?.(message, topic);
    }
    this.batches.push(batch);
    await this.behave(batch, this);
    return [];
  }
  /** Messages per sendBatch call, flattened. */
  sent(): KafkaMessage[][] {
    return this.batches.map((batch) => (batch.topicMessages ?? []).flatMap((t) => t.messages));
  }
}

class FakeKafka {
  readonly producers: FakeProducer[] = [];
  readonly configs: KafkaProducerConfig[] = [];
  constructor(public behave: Behaviour = () => {}) {}
  producer(config?: KafkaProducerConfig): FakeProducer {
    const producer = new FakeProducer((batch, p) => this.behave(batch, p), config);
    this.producers.push(producer);
    this.configs.push(config ?? {});
    return producer;
  }
}

const statuses = (outcomes: PublishOutcome[]) => outcomes.map((outcome) => outcome.status);
const idOf = (message: KafkaMessage) => (message.headers?.[OutboxHeader.Id] as string) ?? "";

describe("partitioner", () => {
  it("puts keyed messages where kafkajs' DefaultPartitioner (Java's murmur2) puts them", () => {
    const ours = createOutboxPartitioner();
    const theirs = Partitioners.DefaultPartitioner();
    const keys = [
      "",
      "a",
      "ab",
      "abc",
      "abcd",
      "abcde",
      "日本語",
      "🚀",
      ...Array.from({ length: 500 }, (_, i) => `k-${i}`),
    ];
    for (const numPartitions of [1, 3, 7, 64]) {
      const metadata = partitionMetadata
        .slice(0, 1)
        .flatMap(() =>
          Array.from({ length: numPartitions }, (_, partitionId) => ({ ...partitionMetadata[0]!, partitionId })),
        );
      for (const key of keys) {
        const args = { topic: "t", partitionMetadata: metadata, message: { key, value: null } };
        expect(ours(args)).toBe(theirs(args));
      }
    }
    // Known value of Kafka's Utils.murmur2 (Java): "21" -> -973932308.
    expect(murmur2(Buffer.from("21"))).toBe(-973932308);
  });

  it("spreads keyless messages by their outbox-id, the same way on every retry", () => {
    const partitioner = createOutboxPartitioner();
    const seen = new Set<number>();
    for (let i = 0; i < 60; i++) {
      const message = { key: null, value: null, headers: { [OutboxHeader.Id]: String(i) } };
      const first = partitioner({ topic: "t", partitionMetadata, message });
      expect(partitioner({ topic: "t", partitionMetadata, message })).toBe(first);
      seen.add(first);
    }
    expect(seen.size).toBe(3);
    expect(partitioner({ topic: "t", partitionMetadata, message: { partition: 2 } })).toBe(2);
  });
});

describe("options", () => {
  it("rejects unusable options with OUTBOX_INVALID_OPTIONS", () => {
    const kafka = new FakeKafka();
    const invalid = (fn: () => unknown) => {
      try {
        fn();
      } catch (error) {
        return OutboxError.is(error, OutboxErrorCode.InvalidOptions);
      }
      return false;
    };
    expect(invalid(() => createKafkaPublisher({} as never))).toBe(true);
    expect(invalid(() => createKafkaPublisher({ producer: {} as never }))).toBe(true);
    expect(invalid(() => createKafkaPublisher({ kafka }, { acks: 0 as never }))).toBe(true);
    expect(invalid(() => createKafkaPublisher({ kafka }, { maxMessageBytes: 0 }))).toBe(true);
    expect(invalid(() => createKafkaPublisher({ kafka }, { timeoutMs: -1 }))).toBe(true);
    expect(invalid(() => createKafkaPublisher({ kafka, producerConfig: { idempotent: true } }, { acks: 1 }))).toBe(
      true,
    );
  });

  it("builds an idempotent, acks=all, one-in-flight producer with bounded retries", async () => {
    const kafka = new FakeKafka();
    const publisher = createKafkaPublisher({ kafka });
    expect(publisher.capabilities.maxPayloadBytes).toBeGreaterThan(900_000);
    await publisher.publish([makeEntry({ topic: "t" })]);
    const config = kafka.configs[0]!;
    expect(config).toMatchObject({ idempotent: true, maxInFlightRequests: 1 });
    expect(config.retry?.retries).toBeLessThanOrEqual(10);
    expect(kafka.producers[0]!.batches[0]).toMatchObject({ acks: -1, timeout: 10_000 });
    // acks 1 turns idempotence off; the user's producerConfig wins over the defaults.
    const leaderOnly = new FakeKafka();
    await createKafkaPublisher({ kafka: leaderOnly, producerConfig: { maxInFlightRequests: 5 } }, { acks: 1 }).publish([
      makeEntry({ topic: "t" }),
    ]);
    expect(leaderOnly.configs[0]).toMatchObject({ idempotent: false, maxInFlightRequests: 5 });
    expect(leaderOnly.producers[0]!.batches[0]).toMatchObject({ acks: 1 });
  });
});

describe("publishing", () => {
  it("sends a batch in one sendBatch grouped by topic, keys and metadata headers as Kafka fields, payload as a view", async () => {
    const kafka = new FakeKafka();
    const publisher = createKafkaPublisher({ kafka });
    const entries = [
      makeEntry({ topic: "a", key: "k1", headers: { "x-unicode": "日本語 🚀" } }),
      makeEntry({ topic: "b", key: null }),
      makeEntry({ topic: "a", key: "k2", payload: new Uint8Array(new ArrayBuffer(16), 4, 8).fill(9) }),
    ];
    expect(statuses(await publisher.publish(entries))).toEqual(["published", "published", "published"]);
    const producer = kafka.producers[0] as FakeProducer;
    expect(producer.connects).toBe(1);
    expect(producer.batches).toHaveLength(1);
    const topics = producer.batches[0]?.topicMessages ?? [];
    expect(topics.map((t) => [t.topic, t.messages.length])).toEqual([
      ["a", 2],
      ["b", 1],
    ]);
    const [first, third] = topics[0]!.messages;
    expect(first!.key).toBe("k1");
    expect(first!.headers).toEqual({
      "x-unicode": "日本語 🚀",
      [OutboxHeader.Id]: entries[0]!.id,
      [OutboxHeader.IdempotencyKey]: entries[0]!.idempotencyKey,
    });
    expect(topics[1]?.messages[0]?.key).toBeNull();
    // No copy: the Buffer shares the entry's memory.
    const value = third!.value as Buffer;
    expect(value.buffer).toBe(entries[2]!.payload.buffer);
    expect([value.byteOffset, value.byteLength]).toEqual([4, 8]);
    await publisher.publish([makeEntry({ topic: "a" })]);
    expect(producer.connects).toBe(1);
  });

  it("returns [] for an empty batch without connecting", async () => {
    const kafka = new FakeKafka();
    expect(await createKafkaPublisher({ kafka }).publish([])).toEqual([]);
    expect(kafka.producers).toHaveLength(0);
  });

  it("routes with the topic function and keeps the original topic in a header; a failing route fails that entry only", async () => {
    const kafka = new FakeKafka();
    const publisher = createKafkaPublisher(
      { kafka },
      {
        topic: (entry) => {
          if (entry.topic === "bad") throw new Error("no route");
          return entry.topic === "empty" ? "" : `prod.${entry.topic}`;
        },
      },
    );
    const outcomes = await publisher.publish([
      makeEntry({ topic: "orders" }),
      makeEntry({ topic: "bad" }),
      makeEntry({ topic: "empty" }),
    ]);
    expect(statuses(outcomes)).toEqual(["published", "permanent", "permanent"]);
    const batch = kafka.producers[0]?.batches[0] as KafkaProducerBatch;
    expect(batch.topicMessages!.map((t) => t.topic)).toEqual(["prod.orders"]);
    expect(batch.topicMessages?.[0]?.messages[0]?.headers?.[OutboxHeader.Topic]).toBe("orders");
  });

  it("refuses records over maxMessageBytes before sending and splits big batches into requests under it", async () => {
    const kafka = new FakeKafka();
    const publisher = createKafkaPublisher({ kafka }, { maxMessageBytes: 10_000 });
    const entries = [
      ...Array.from({ length: 9 }, (_, i) => makeEntry({ topic: "t", key: `k${i}`, payload: new Uint8Array(3_000) })),
      makeEntry({ topic: "t", key: "big", payload: new Uint8Array(10_000) }),
    ];
    const outcomes = await publisher.publish(entries);
    expect(statuses(outcomes)).toEqual([...Array(9).fill("published"), "permanent"]);
    const error = (outcomes[9] as { error: OutboxError }).error;
    expect(error.details.type).toBe("MESSAGE_TOO_LARGE");
    const sizes = kafka.producers[0]!.sent().map((messages) => messages.length);
    expect(sizes).toEqual([3, 3, 3]);
    for (const messages of kafka.producers[0]!.sent()) {
      expect(messages.reduce((sum, m) => sum + estimateRecordBytes(m), 61)).toBeLessThanOrEqual(10_000);
    }
  });

  it("isolates a record the broker refuses: per partition first, then by halves; neighbours published", async () => {
    let badId = "";
    const kafka = new FakeKafka((batch) => {
      const messages = (batch.topicMessages ?? []).flatMap((t) => t.messages);
      if (messages.some((m) => idOf(m) === badId)) throw protocolError("MESSAGE_TOO_LARGE", 10, false);
    });
    const publisher = createKafkaPublisher({ kafka });
    const entries = Array.from({ length: 12 }, (_, i) => makeEntry({ topic: "t", key: `key-${i}` }));
    badId = entries[7]!.id;
    const outcomes = await publisher.publish(entries);
    expect(statuses(outcomes)).toEqual(entries.map((e) => (e.id === badId ? "permanent" : "published")));
    const error = (outcomes[7] as { error: OutboxError }).error;
    expect(error.code).toBe(OutboxErrorCode.PublishFailed);
    expect(error.details.type).toBe("MESSAGE_TOO_LARGE");
    const [first, ...resends] = kafka.producers[0]!.sent();
    expect(first).toHaveLength(12);
    // Re-sends pin the partition the first attempt used, one partition per request.
    for (const messages of resends) {
      expect(new Set(messages.map((m) => m.partition)).size).toBe(1);
      expect(messages.every((m) => m.partition !== undefined)).toBe(true);
    }
    // The permanent refusal keeps the producer (its id dedupes the re-sent batches).
    expect(kafka.producers).toHaveLength(1);
    expect(publisher.producerRenewals).toBe(0);
  });

  it("fails every entry of a refused topic, and only those, without retrying that topic per partition", async () => {
    const kafka = new FakeKafka((batch) => {
      if (batch.topicMessages?.some((t) => t.topic === "forbidden")) {
        throw new KafkaJSNumberOfRetriesExceeded(protocolError("UNKNOWN_TOPIC_OR_PARTITION", 3, true), {
          retryCount: 5,
          retryTime: 1000,
        } as never);
      }
    });
    const publisher = createKafkaPublisher({ kafka });
    const entries = [
      makeEntry({ topic: "ok", key: "a" }),
      makeEntry({ topic: "forbidden", key: "b" }),
      makeEntry({ topic: "forbidden", key: "c" }),
      makeEntry({ topic: "ok", key: "d" }),
    ];
    expect(statuses(await publisher.publish(entries))).toEqual(["published", "permanent", "permanent", "published"]);
    const refusedSends = kafka.producers[0]!.batches.filter((b) =>
      b.topicMessages?.some((t) => t.topic === "forbidden"),
    );
    expect(refusedSends.length).toBeLessThanOrEqual(2);
  });

  it("a topic refused in one request fails its entries in the next request of the same publish without a send", async () => {
    const kafka = new FakeKafka((batch) => {
      if (batch.topicMessages?.some((t) => t.topic === "forbidden")) {
        throw protocolError("TOPIC_AUTHORIZATION_FAILED", 29, false);
      }
    });
    // 3 entries per request: the second request holds "forbidden" and "ok" entries again.
    const publisher = createKafkaPublisher({ kafka }, { maxMessageBytes: 1_000 });
    const entries = ["forbidden", "ok", "forbidden", "ok", "forbidden", "ok"].map((topic, i) =>
      makeEntry({ topic, key: `k${i}`, payload: new Uint8Array(150) }),
    );
    const outcomes = await publisher.publish(entries);
    expect(statuses(outcomes)).toEqual(["permanent", "published", "permanent", "published", "permanent", "published"]);
    expect((outcomes[4] as { error: OutboxError }).error.details.type).toBe("TOPIC_AUTHORIZATION_FAILED");
    const sends = kafka.producers[0]?.batches ?? [];
    expect(sends.length).toBeGreaterThan(3);
    // Request 1 (both topics) fails; per topic: "forbidden" fails, "ok" goes; later requests
    // carry only "ok" entries.
    expect(sends.filter((b) => b.topicMessages?.some((t) => t.topic === "forbidden"))).toHaveLength(2);
  });

  it("reports a broker outage as transient for every entry and renews an owned idempotent producer before the next send", async () => {
    let down = true;
    const kafka = new FakeKafka(() => {
      if (down)
        throw new KafkaJSNumberOfRetriesExceeded(
          new KafkaJSConnectionError("Connection error: ECONNREFUSED"),
          {} as never,
        );
    });
    const publisher = createKafkaPublisher({ kafka });
    const entries = [makeEntry({ topic: "t", key: "a" }), makeEntry({ topic: "t", key: "b" })];
    const outcomes = await publisher.publish(entries);
    expect(statuses(outcomes)).toEqual(["transient", "transient"]);
    expect((outcomes[0] as { error: OutboxError }).error.code).toBe(OutboxErrorCode.PublishFailed);
    down = false;
    expect(statuses(await publisher.publish(entries))).toEqual(["published", "published"]);
    expect(kafka.producers).toHaveLength(2);
    expect(kafka.producers[0]!.disconnects).toBe(1);
    expect(publisher.producerRenewals).toBe(1);
  });

  it("never renews a producer it does not own, and never disconnects it", async () => {
    let fail = true;
    const producer = new FakeProducer(() => {
      if (fail) throw protocolError("OUT_OF_ORDER_SEQUENCE_NUMBER", 45, false);
    });
    const publisher = createKafkaPublisher({ producer });
    expect(statuses(await publisher.publish([makeEntry({ topic: "t" })]))).toEqual(["transient"]);
    fail = false;
    expect(statuses(await publisher.publish([makeEntry({ topic: "t" })]))).toEqual(["published"]);
    await publisher.close();
    expect(producer.disconnects).toBe(0);
    expect(publisher.producerRenewals).toBe(0);
  });

  it("connects again after the producer was disconnected", async () => {
    const producer = new FakeProducer(() => {});
    const publisher = createKafkaPublisher({ producer });
    await publisher.publish([makeEntry({ topic: "t" })]);
    await producer.disconnect();
    await publisher.publish([makeEntry({ topic: "t" })]);
    expect(producer.connects).toBe(2);
  });

  it("bounds a publish by timeoutMs: a send that never returns becomes transient and the producer is renewed", async () => {
    let hang = true;
    const kafka = new FakeKafka(() => (hang ? new Promise<void>(() => {}) : undefined));
    const publisher = createKafkaPublisher({ kafka }, { timeoutMs: 200 });
    const started = Date.now();
    const outcomes = await publisher.publish([makeEntry({ topic: "t" }), makeEntry({ topic: "t", key: "x" })]);
    expect(Date.now() - started).toBeLessThan(2_000);
    expect(statuses(outcomes)).toEqual(["transient", "transient"]);
    hang = false;
    expect(statuses(await publisher.publish([makeEntry({ topic: "t" })]))).toEqual(["published"]);
    expect(kafka.producers).toHaveLength(2);
  });

  it("stops at the relay's lease signal: a send still unconfirmed becomes transient, the producer is renewed", async () => {
    let hang = true;
    let sending!: () => void;
    const inSend = new Promise<void>((resolve) => {
      sending = resolve;
    });
    const kafka = new FakeKafka(() => {
      sending();
      return hang ? new Promise<void>(() => {}) : undefined;
    });
    // An own timeout far away: only the signal can end this publish early.
    const publisher = createKafkaPublisher({ kafka }, { timeoutMs: 60_000 });
    const lease = new AbortController();
    const publishing = publisher.publish([makeEntry({ topic: "t" }), makeEntry({ topic: "t", key: "x" })], {
      signal: lease.signal,
    });
    await inSend;
    lease.abort(new Error("the lease is about to end"));
    expect(statuses(await publishing)).toEqual(["transient", "transient"]);
    hang = false;
    expect(statuses(await publisher.publish([makeEntry({ topic: "t" })]))).toEqual(["published"]);
    expect(kafka.producers).toHaveLength(2);
  });

  it("bounds a connect that hangs, and reuses that connect attempt next time", async () => {
    const producer = new FakeProducer(() => {});
    let release!: () => void;
    const connected = new Promise<void>((resolve) => {
      release = resolve;
    });
    producer.connect = async () => {
      producer.connects += 1;
      await connected;
    };
    const publisher = createKafkaPublisher({ producer }, { timeoutMs: 100 });
    expect(statuses(await publisher.publish([makeEntry({ topic: "t" })]))).toEqual(["transient"]);
    release();
    expect(statuses(await publisher.publish([makeEntry({ topic: "t" })]))).toEqual(["published"]);
    expect(producer.connects).toBe(1);
  });

  it("serialises concurrent publish calls", async () => {
    let active = 0;
    let maxActive = 0;
    const kafka = new FakeKafka(async () => {
      active += 1;
      maxActive = Math.max(maxActive, active);
      await new Promise((resolve) => setTimeout(resolve, 10));
      active -= 1;
    });
    const publisher = createKafkaPublisher({ kafka });
    await Promise.all(Array.from({ length: 5 }, () => publisher.publish([makeEntry({ topic: "t" })])));
    expect(maxActive).toBe(1);
  });

  it("close() waits for the in-flight publish, disconnects an owned producer, then publish throws OUTBOX_CLOSED", async () => {
    const kafka = new FakeKafka(() => new Promise((resolve) => setTimeout(resolve, 50)));
    const publisher = createKafkaPublisher({ kafka });
    const inFlight = publisher.publish([makeEntry({ topic: "t" })]);
    await new Promise((resolve) => setTimeout(resolve, 5));
    await publisher.close();
    expect(statuses(await inFlight)).toEqual(["published"]);
    expect(kafka.producers[0]!.disconnects).toBe(1);
    const error = await publisher.publish([makeEntry({ topic: "t" })]).catch((caught: unknown) => caught);
    expect(OutboxError.is(error, OutboxErrorCode.Closed)).toBe(true);
    await publisher.close();
  });

  it("lets classifyError override the policy", async () => {
    const kafka = new FakeKafka(() => {
      throw protocolError("POLICY_VIOLATION", 44, false);
    });
    const publisher = createKafkaPublisher(
      { kafka },
      {
        classifyError: (error) =>
          (error as { type?: string }).type === "POLICY_VIOLATION"
            ? { kind: "transient", resetProducer: false, type: "POLICY_VIOLATION" }
            : undefined,
      },
    );
    expect(statuses(await publisher.publish([makeEntry({ topic: "t" })]))).toEqual(["transient"]);
  });
});
