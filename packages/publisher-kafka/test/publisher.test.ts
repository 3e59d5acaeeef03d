// The publisher against the real broker (scripts/services.sh start kafka), read back by real consumers.
import { bytesEqual, keyOrderViolations, makeEntry } from "@outbox/conformance";
import { type OutboxError, OutboxErrorCode, OutboxHeader, type PublishOutcome } from "@outbox/core";
import { type Admin, CompressionTypes, type Kafka } from "kafkajs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createKafkaPublisher, ensureTopics, type KafkaProducerLike, murmur2 } from "../src/index.js";
import {
  consoleConsume,
  createTopic,
  dropConnections,
  newKafka,
  plainPartitioner,
  readTopic,
  uniqueTopic,
} from "./support/kafka.js";

const statuses = (outcomes: PublishOutcome[]) => outcomes.map((outcome) => outcome.status);
const errorOf = (outcome: PublishOutcome | undefined) => (outcome as { error: OutboxError }).error;
const text = (value: string) => new TextEncoder().encode(value);
/** Java's DefaultPartitioner for a keyed record. */
const javaPartition = (key: string, partitions: number) => (murmur2(Buffer.from(key)) & 0x7fffffff) % partitions;

let kafka: Kafka;
let admin: Admin;

beforeAll(async () => {
  kafka = newKafka();
  admin = kafka.admin();
  await admin.connect();
});

afterAll(async () => {
  await admin?.disconnect();
});

/** Counts sendBatch calls of the producers a publisher builds. */
function countingKafka(): { kafka: Kafka; sends: () => number } {
  let sends = 0;
  const counted = Object.create(kafka) as Kafka;
  counted.producer = (config) => {
    const producer = kafka.producer(config);
    const sendBatch = producer.sendBatch.bind(producer);
    producer.sendBatch = (batch) => {
      sends += 1;
      return sendBatch(batch);
    };
    return producer;
  };
  return { kafka: counted, sends: () => sends };
}

describe("publisher-kafka on Apache Kafka 3.9.1", () => {
  it("publishes a 500-entry batch over 2 topics in one request; keys land on Java's partition, in order", async () => {
    const [a, b] = [await createTopic(admin), await createTopic(admin)] as [string, string];
    const { kafka: counted, sends } = countingKafka();
    const publisher = createKafkaPublisher({ kafka: counted });
    try {
      const keys = Array.from({ length: 125 }, (_, i) => `customer-${i}`);
      let seq = 0;
      // Two rounds of 250 entries; the relay never puts a key twice into one batch.
      for (let round = 0; round < 2; round++) {
        const entries = [a, b].flatMap((topic) =>
          keys.map((key) => makeEntry({ topic, key, headers: { "x-seq": String(seq++) } })),
        );
        const outcomes = await publisher.publish(entries);
        expect(statuses(outcomes).every((s) => s === "published")).toBe(true);
      }
      expect(sends()).toBe(2);
      const received = [...(await readTopic(kafka, admin, a, 30_000)), ...(await readTopic(kafka, admin, b, 30_000))];
      expect(received).toHaveLength(500);
      for (const message of received) expect(message.partition).toBe(javaPartition(message.key as string, 3));
      expect(
        keyOrderViolations(received.map((m) => ({ key: `${m.topic}/${m.key}`, seq: Number(m.headers["x-seq"]) }))),
      ).toEqual([]);
    } finally {
      await publisher.close();
    }
  });

  it("is read back byte-exact by Kafka's own console consumer (an independent Java client)", async () => {
    const topic = await createTopic(admin);
    const publisher = createKafkaPublisher({ kafka });
    try {
      const entries = [
        makeEntry({
          topic,
          key: "clé-日本語-🚀",
          payload: text("naïve café — 日本語 — 🚀🧪"),
          headers: { "x-unicode": "ü 🚀" },
        }),
        makeEntry({
          topic,
          key: "plain",
          payload: text('{"order":42}'),
          headers: { "content-type": "application/json" },
        }),
        makeEntry({ topic, key: null, payload: text("keyless") }),
      ];
      expect(statuses(await publisher.publish(entries))).toEqual(["published", "published", "published"]);
      const records = await consoleConsume(topic, entries.length);
      expect(records).toHaveLength(entries.length);
      for (const entry of entries) {
        const record = records.find((r) => r.headers[OutboxHeader.IdempotencyKey] === entry.idempotencyKey);
        expect(record, `entry ${entry.id}`).toBeDefined();
        expect(record?.key).toBe(entry.key);
        expect(record?.value).toBe(new TextDecoder().decode(entry.payload));
        expect(record?.headers[OutboxHeader.Id]).toBe(entry.id);
        for (const [name, value] of Object.entries(entry.headers)) expect(record?.headers[name]).toBe(value);
        if (entry.key !== null) expect(record?.partition).toBe(javaPartition(entry.key, 3));
      }
    } finally {
      await publisher.close();
    }
  }, 60_000);

  it("broker-side MESSAGE_TOO_LARGE fails only the oversize entry; the others are written exactly once", async () => {
    // Topic limit 4 KiB, publisher pre-check left at its 1 MB default: the broker refuses.
    const topic = await createTopic(admin, { config: { "max.message.bytes": "4096" } });
    const publisher = createKafkaPublisher({ kafka });
    try {
      const entries = Array.from({ length: 30 }, (_, i) =>
        makeEntry({ topic, key: `k-${i}`, payload: new Uint8Array(i === 17 ? 16 * 1024 : 100).fill(i) }),
      );
      const outcomes = await publisher.publish(entries);
      expect(statuses(outcomes)).toEqual(entries.map((_, i) => (i === 17 ? "permanent" : "published")));
      expect(errorOf(outcomes[17]).code).toBe(OutboxErrorCode.PublishFailed);
      expect(errorOf(outcomes[17]).details.type).toBe("MESSAGE_TOO_LARGE");
      const received = await readTopic(kafka, admin, topic, 30_000);
      // Batches of other partitions that the broker had appended came back as duplicates of the
      // same producer id and sequence numbers: deduplicated by the broker, not written twice.
      expect(received.map((m) => m.idempotencyKey).sort()).toEqual(
        entries
          .filter((_, i) => i !== 17)
          .map((e) => e.idempotencyKey)
          .sort(),
      );
      // And the producer is healthy afterwards.
      expect(statuses(await publisher.publish([makeEntry({ topic, key: "k-after" })]))).toEqual(["published"]);
      expect(publisher.producerRenewals).toBe(0);
    } finally {
      await publisher.close();
    }
  });

  it("an unknown topic (auto-creation off) fails its entries only, within a bounded time", async () => {
    const good = await createTopic(admin);
    const missing = uniqueTopic("outbox-missing");
    const publisher = createKafkaPublisher({ kafka, producerConfig: { allowAutoTopicCreation: false } });
    try {
      const entries = [
        makeEntry({ topic: good, key: "a" }),
        makeEntry({ topic: missing, key: "b" }),
        makeEntry({ topic: good, key: "c" }),
        makeEntry({ topic: missing, key: "d" }),
      ];
      const started = Date.now();
      const outcomes = await publisher.publish(entries);
      const elapsed = Date.now() - started;
      expect(statuses(outcomes)).toEqual(["published", "permanent", "published", "permanent"]);
      expect(errorOf(outcomes[1]).details.type).toBe("UNKNOWN_TOPIC_OR_PARTITION");
      expect(elapsed).toBeLessThan(20_000);
      // kafkajs does not keep the unknown topic in its metadata targets: later sends work.
      expect(statuses(await publisher.publish([makeEntry({ topic: good, key: "e" })]))).toEqual(["published"]);
      expect((await admin.listTopics()).includes(missing)).toBe(false);
      const received = await readTopic(kafka, admin, good, 30_000);
      expect(received.map((m) => m.key).sort()).toEqual(["a", "c", "e"]);
    } finally {
      await publisher.close();
    }
  }, 60_000);

  it("a keyless entry for a compacted topic is refused for good; keyed neighbours are published", async () => {
    const topic = await createTopic(admin, { config: { "cleanup.policy": "compact" } });
    const publisher = createKafkaPublisher({ kafka });
    try {
      const outcomes = await publisher.publish([
        makeEntry({ topic, key: "a" }),
        makeEntry({ topic, key: null }),
        makeEntry({ topic, key: "b" }),
      ]);
      expect(statuses(outcomes)).toEqual(["published", "permanent", "published"]);
      expect(errorOf(outcomes[1]).details.type).toBe("INVALID_RECORD");
      const received = await readTopic(kafka, admin, topic, 30_000);
      expect(received.map((m) => m.key).sort()).toEqual(["a", "b"]);
    } finally {
      await publisher.close();
    }
  }, 60_000);

  it("routes with a topic function, keeps the original topic in a header, and compresses with gzip", async () => {
    const topic = await createTopic(admin);
    const publisher = createKafkaPublisher({ kafka }, { topic: () => topic, compression: CompressionTypes.GZIP });
    try {
      const payload = text("x".repeat(10_000));
      const entry = makeEntry({ topic: "orders.created", key: "o-1", payload });
      expect(statuses(await publisher.publish([entry]))).toEqual(["published"]);
      const [message] = await readTopic(kafka, admin, topic, 30_000);
      expect(message?.headers[OutboxHeader.Topic]).toBe("orders.created");
      expect(bytesEqual(message?.payload ?? new Uint8Array(), payload)).toBe(true);
    } finally {
      await publisher.close();
    }
  });

  it("uses the caller's producer without disconnecting it, and reconnects it after a disconnect", async () => {
    const topic = await createTopic(admin);
    const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1, createPartitioner: plainPartitioner });
    const disconnects: number[] = [];
    producer.on(producer.events.DISCONNECT, () => disconnects.push(Date.now()));
    const publisher = createKafkaPublisher({ producer: producer satisfies KafkaProducerLike });
    expect(statuses(await publisher.publish([makeEntry({ topic, key: "a" })]))).toEqual(["published"]);
    await producer.disconnect();
    expect(statuses(await publisher.publish([makeEntry({ topic, key: "b" })]))).toEqual(["published"]);
    await publisher.close();
    expect(disconnects).toHaveLength(1);
    // Still the caller's, still connected.
    await producer.send({ topic, messages: [{ key: "c", value: "by the caller" }] });
    await producer.disconnect();
    expect((await readTopic(kafka, admin, topic, 30_000)).map((m) => m.key).sort()).toEqual(["a", "b", "c"]);
  });

  it("reports an unreachable broker as transient within timeoutMs, then recovers when it is reachable", async () => {
    const topic = await createTopic(admin);
    // Port 9 (discard) on loopback: connection refused.
    const unreachable = newKafka({ brokers: ["127.0.0.1:9"], connectionTimeout: 500, retry: { retries: 2 } });
    const publisher = createKafkaPublisher({ kafka: unreachable }, { timeoutMs: 4_000 });
    const started = Date.now();
    const outcomes = await publisher.publish([makeEntry({ topic, key: "a" }), makeEntry({ topic, key: "b" })]);
    expect(Date.now() - started).toBeLessThan(6_000);
    expect(statuses(outcomes)).toEqual(["transient", "transient"]);
    expect(errorOf(outcomes[0]).code).toBe(OutboxErrorCode.PublishFailed);
    await publisher.close();
  }, 30_000);

  it("survives repeated connection drops: every entry published, none reported lost", async () => {
    const topic = await createTopic(admin);
    const publisher = createKafkaPublisher({ kafka });
    try {
      const published = new Set<string>();
      let seq = 0;
      for (let round = 0; round < 6; round++) {
        const batch = Array.from({ length: 20 }, (_, i) =>
          makeEntry({ topic, key: `k-${i}`, headers: { "x-seq": String(seq++) } }),
        );
        let pending = batch;
        for (let attempt = 0; pending.length > 0; attempt++) {
          expect(attempt).toBeLessThan(30);
          if (attempt === 0 && round % 2 === 1) expect(await dropConnections()).toBeGreaterThan(0);
          const outcomes = await publisher.publish(pending);
          expect(outcomes.every((o) => o.status !== "permanent")).toBe(true);
          pending.forEach((entry, i) => {
            if (outcomes[i]?.status === "published") published.add(entry.idempotencyKey);
          });
          pending = pending.filter((_, i) => outcomes[i]?.status !== "published");
          if (pending.length > 0) await new Promise((resolve) => setTimeout(resolve, 200));
        }
      }
      const received = await readTopic(kafka, admin, topic, 30_000);
      expect(new Set(received.map((m) => m.idempotencyKey))).toEqual(published);
      expect(published.size).toBe(120);
      expect(
        keyOrderViolations(received.map((m) => ({ key: `${m.topic}/${m.key}`, seq: Number(m.headers["x-seq"]) }))),
      ).toEqual([]);
    } finally {
      await publisher.close();
    }
  }, 120_000);
});

describe("ensureTopics", () => {
  it("creates missing topics with the given partitions and config, and leaves existing ones alone", async () => {
    const [a, b] = [uniqueTopic("ensure"), uniqueTopic("ensure")];
    expect(await ensureTopics(admin, [a, b, a], { partitions: 5, config: { "retention.ms": "60000" } })).toEqual([
      a,
      b,
    ]);
    expect(await ensureTopics(admin, [a, b])).toEqual([]);
    const metadata = await admin.fetchTopicMetadata({ topics: [a] });
    expect(metadata.topics[0]?.partitions).toHaveLength(5);
    const configs = await admin.describeConfigs({
      includeSynonyms: false,
      resources: [{ type: 2, name: a, configNames: ["retention.ms"] }],
    });
    expect(configs.resources[0]?.configEntries[0]?.configValue).toBe("60000");
  });
});
