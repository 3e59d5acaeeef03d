// The publisher on the real broker (RabbitMQ 3.10 from scripts/services.sh), read back by a real
// amqplib consumer on quorum queues, under the faults the issue lists.
import { makeEntry } from "@outbox/conformance";
import type { OutboxEntry, OutboxError, PublishOutcome } from "@outbox/core";
import { waitFor } from "@outbox/test-support/wait";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { AmqpHeader, createRabbitMqPublisher, type RabbitMqPublisher } from "../src/index.js";
import {
  amqpUrl,
  asConnection,
  closeAllConnections,
  connect,
  createQueue,
  deleteQueue,
  memoryAlarmOn,
  memoryWatermark,
  QueueReader,
  restartBroker,
  setMemoryWatermark,
  TEST_EXCHANGE,
  uniqueName,
  withChannel,
} from "./support/rabbit.js";

const statuses = (outcomes: PublishOutcome[]) => outcomes.map((outcome) => outcome.status);
const typeOf = (outcome: PublishOutcome | undefined) =>
  outcome && outcome.status !== "published" ? (outcome.error as OutboxError).details.type : undefined;
const ids = (entries: ReadonlyArray<{ idempotencyKey: string }>) => entries.map((e) => e.idempotencyKey);

const publishers: RabbitMqPublisher[] = [];
const queues: string[] = [];
function publisher(options: Partial<Parameters<typeof createRabbitMqPublisher>[0]> = {}): RabbitMqPublisher {
  const created = createRabbitMqPublisher({ url: amqpUrl, exchange: TEST_EXCHANGE, ...options });
  publishers.push(created);
  return created;
}
async function queue(options?: Parameters<typeof createQueue>[0]): Promise<string> {
  const name = await createQueue(options);
  queues.push(name);
  return name;
}
afterEach(async () => {
  await Promise.all(publishers.splice(0).map((p) => p.close()));
});
afterAll(async () => {
  await Promise.all(queues.map(deleteQueue));
});

/**
 * Checks the run contract against what the consumer read: per key, nothing after the first entry
 * that was not published may have reached the queue, except that entry itself (sent, unconfirmed).
 */
function runViolations(entries: OutboxEntry[], outcomes: PublishOutcome[], received: Set<string>): string[] {
  const violations: string[] = [];
  const failedAt = new Map<string, number>();
  entries.forEach((entry, index) => {
    if (entry.key === null) return;
    const failed = failedAt.get(entry.key);
    if (failed !== undefined && index > failed && received.has(entry.idempotencyKey)) {
      violations.push(`${entry.key}: entry ${index} reached the queue after entry ${failed} failed`);
    }
    if (failed === undefined && outcomes[index]?.status !== "published") failedAt.set(entry.key, index);
  });
  return violations;
}

describe("messages", () => {
  it("carries persistent delivery, messageId, headers, content type, timestamp and the exact bytes", async () => {
    const topic = await queue();
    const payload = new Uint8Array([0, 255, 0, 128, 1]);
    const createdAt = new Date("2026-03-04T05:06:07.890Z");
    const entry = makeEntry({
      topic,
      key: "customer-7",
      payload,
      headers: { "content-type": "application/x-test", "x-trace": "abc" },
      createdAt,
    });
    expect(statuses(await publisher().publish([entry]))).toEqual(["published"]);
    const message = await withChannel(async (channel) => {
      const got = await waitFor(() => channel.get(topic, { noAck: true }), 10_000, "the message");
      if (got === false) throw new Error("unreachable");
      return got;
    });
    expect(Buffer.from(message.content).equals(Buffer.from(payload))).toBe(true);
    expect(message.fields.exchange).toBe(TEST_EXCHANGE);
    expect(message.fields.routingKey).toBe(topic);
    expect(message.properties.deliveryMode).toBe(2);
    expect(message.properties.messageId).toBe(entry.idempotencyKey);
    expect(message.properties.contentType).toBe("application/x-test");
    expect(message.properties.timestamp).toBe(Math.floor(createdAt.getTime() / 1_000));
    expect(message.properties.headers).toMatchObject({
      "content-type": "application/x-test",
      "x-trace": "abc",
      [AmqpHeader.Id]: entry.id,
      [AmqpHeader.IdempotencyKey]: entry.idempotencyKey,
      [AmqpHeader.Key]: "customer-7",
    });
  });

  it("routes by the routingKey option and records the topic in outbox-topic", async () => {
    const target = await queue();
    const entry = makeEntry({ topic: "orders.created", key: "k" });
    expect(statuses(await publisher({ routingKey: () => target }).publish([entry]))).toEqual(["published"]);
    const [message] = await new QueueReader().receive(target, 1, 10_000);
    expect(message?.topic).toBe("orders.created");
    expect(message?.idempotencyKey).toBe(entry.idempotencyKey);
  });

  it("streams a large batch through the channel's write buffer (back-pressure) and confirms all of it", async () => {
    const topic = await queue();
    const body = new Uint8Array(16 * 1024).fill(9);
    // 3,000 writes of 16 KiB: far past the channel buffer's 1,024-frame high-water mark.
    const entries = Array.from({ length: 3_000 }, (_, n) => makeEntry({ topic, key: `k${n}`, payload: body }));
    const outcomes = await publisher().publish(entries);
    expect(statuses(outcomes).every((s) => s === "published")).toBe(true);
    const received = await new QueueReader().receive(topic, entries.length, 60_000);
    expect(new Set(ids(received)).size).toBe(entries.length);
  }, 90_000);
});

describe("failures", () => {
  it("an unroutable entry fails permanently and holds back its key only", async () => {
    const topic = await queue();
    const a1 = makeEntry({ topic, key: "a" });
    const a2 = makeEntry({ topic: `${topic}.nowhere`, key: "a" });
    const a3 = makeEntry({ topic, key: "a" });
    const b1 = makeEntry({ topic, key: "b" });
    const n1 = makeEntry({ topic: `${topic}.nowhere`, key: null });
    const n2 = makeEntry({ topic, key: null });
    const outcomes = await publisher().publish([a1, a2, a3, b1, n1, n2]);
    expect(statuses(outcomes)).toEqual(["published", "permanent", "transient", "published", "permanent", "published"]);
    expect(typeOf(outcomes[1])).toBe("UNROUTABLE");
    const received = await new QueueReader().receive(topic, 4, 5_000);
    expect(ids(received).sort()).toEqual(ids([a1, b1, n2]).sort());
  });

  it("a full queue with x-overflow reject-publish nacks: transient, and the key's later entries are held back", async () => {
    const topic = await queue({ arguments: { "x-max-length": 2, "x-overflow": "reject-publish" } });
    const p = publisher();
    // Fill the queue until the broker refuses (quorum queues check the limit as messages arrive).
    const fillers: OutboxEntry[] = [];
    for (let n = 0; n < 10; n++) {
      const filler = makeEntry({ topic, key: null });
      const [outcome] = await p.publish([filler]);
      if (outcome?.status !== "published") {
        expect(typeOf(outcome)).toBe("NACKED");
        break;
      }
      fillers.push(filler);
    }
    expect(fillers.length).toBeGreaterThanOrEqual(2);
    expect(fillers.length).toBeLessThan(10);
    const a = [makeEntry({ topic, key: "a" }), makeEntry({ topic, key: "a" }), makeEntry({ topic, key: "a" })];
    const b = makeEntry({ topic, key: null });
    const outcomes = await p.publish([...a, b]);
    expect(statuses(outcomes)).toEqual(["transient", "transient", "transient", "transient"]);
    expect(outcomes.map(typeOf)).toEqual(["NACKED", undefined, undefined, "NACKED"]);
    expect((outcomes[1] as { error: OutboxError }).error.details.reason).toBe("held-back");
    // A consumer makes room: the same entries go through.
    const received = await new QueueReader().receive(topic, fillers.length, 10_000);
    expect(ids(received)).toEqual(ids(fillers));
    expect(statuses(await p.publish([a[0] as OutboxEntry, b]))).toEqual(["published", "published"]);
  });

  it("a missing exchange is transient (EXCHANGE_NOT_FOUND); on the caller's connection, which stays open", async () => {
    const exchange = uniqueName("outbox.missing");
    const connection = await connect();
    let closed = false;
    connection.on("close", () => {
      closed = true;
    });
    try {
      const p = createRabbitMqPublisher({ connection: asConnection(connection), exchange });
      publishers.push(p);
      const topic = uniqueName("outbox-rmq");
      const entries = [makeEntry({ topic, key: "a" }), makeEntry({ topic, key: null })];
      const outcomes = await p.publish(entries);
      expect(statuses(outcomes)).toEqual(["transient", "transient"]);
      expect(outcomes.map(typeOf)).toEqual(["EXCHANGE_NOT_FOUND", "EXCHANGE_NOT_FOUND"]);
      // The operator creates the exchange: the publisher opens a new channel and publishes.
      await queue({ exchange });
      const target = await withChannel(async (channel) => {
        const name = uniqueName("outbox-rmq");
        await channel.assertQueue(name, { durable: true, arguments: { "x-queue-type": "quorum" } });
        await channel.bindQueue(name, exchange, topic);
        queues.push(name);
        return name;
      });
      expect(statuses(await p.publish(entries))).toEqual(["published", "published"]);
      await p.close();
      expect(closed).toBe(false);
      expect((await new QueueReader().receive(target, 2, 10_000)).length).toBe(2);
      await withChannel((channel) => channel.deleteExchange(exchange));
    } finally {
      await connection.close().catch(() => undefined);
    }
  });

  it("entries too large for maxMessageBytes fail permanently without being sent", async () => {
    const topic = await queue();
    const outcomes = await publisher({ maxMessageBytes: 1_000 }).publish([
      makeEntry({ topic, key: "a", payload: new Uint8Array(1_001) }),
      makeEntry({ topic, key: "b", payload: new Uint8Array(1_000) }),
    ]);
    expect(statuses(outcomes)).toEqual(["permanent", "published"]);
    expect(typeOf(outcomes[0])).toBe("MESSAGE_TOO_LARGE");
  });

  it("an abort mid-flight: confirmed entries stay published, the rest come back transient and never reach the queue", async () => {
    const topic = await queue();
    // One hot key: 400 waves, one confirm round trip each.
    const entries = Array.from({ length: 400 }, () => makeEntry({ topic, key: "hot" }));
    const controller = new AbortController();
    const reader = new QueueReader();
    const p = publisher();
    await p.publish([makeEntry({ topic, key: "warm-up" })]);
    const running = p.publish(entries, { signal: controller.signal });
    await waitFor(async () => (await reader.receive(topic, 10, 200)).length >= 10, 30_000, "10 messages");
    controller.abort(new Error("lease ending"));
    const outcomes = await running;
    const publishedCount = outcomes.filter((o) => o.status === "published").length;
    expect(publishedCount).toBeGreaterThan(0);
    expect(publishedCount).toBeLessThan(entries.length);
    // A published prefix, then transient: the one in flight ABORTED, the rest held back.
    expect(statuses(outcomes)).toEqual(entries.map((_, i) => (i < publishedCount ? "published" : "transient")));
    expect(typeOf(outcomes[publishedCount])).toBe("ABORTED");
    const received = new Set(ids(await reader.receive(topic, entries.length + 1, 2_000)));
    expect(runViolations(entries, outcomes, received)).toEqual([]);
    for (const [i, entry] of entries.entries()) {
      if (i < publishedCount) expect(received.has(entry.idempotencyKey)).toBe(true);
    }
  }, 60_000);
});

describe("faults", () => {
  it("rabbitmqctl close_all_connections mid-publish: transient, the run contract holds, the next publish reconnects", async () => {
    const topic = await queue();
    const p = publisher();
    const reader = new QueueReader();
    const all: OutboxEntry[] = [];
    let hit = false;
    for (let attempt = 0; attempt < 3 && !hit; attempt++) {
      // 4 keys x 2,500 entries: 2,500 waves (seconds), long enough for the broker to cut it mid-way.
      const entries = Array.from({ length: 10_000 }, (_, n) => makeEntry({ topic, key: `k${n % 4}` }));
      all.push(...entries);
      const running = p.publish(entries);
      await closeAllConnections("outbox test: close_all_connections");
      const outcomes = await running;
      const failed = outcomes.filter((o) => o.status !== "published");
      hit = failed.length > 0;
      if (hit) {
        expect(failed.every((o) => o.status === "transient")).toBe(true);
        expect(new Set(failed.map(typeOf).filter((t) => t !== undefined))).toSatisfy((types: Set<unknown>) =>
          [...types].every((t) => t === "CHANNEL_CLOSED" || t === "CONNECTION"),
        );
        const received = new Set(ids(await reader.receive(topic, Number.MAX_SAFE_INTEGER, 3_000)));
        expect(runViolations(entries, outcomes, received)).toEqual([]);
        // Retrying what failed (as the relay would) delivers everything.
        const retry = entries.filter((_, i) => outcomes[i]?.status !== "published");
        let retryOutcomes: PublishOutcome[] = [];
        await waitFor(
          async () => {
            retryOutcomes = await p.publish(retry);
            return retryOutcomes.every((o) => o.status === "published");
          },
          30_000,
          "the retry to go through",
          200,
        );
      }
    }
    expect(hit).toBe(true);
    const received = await reader.receive(topic, all.length, 30_000);
    expect(new Set(ids(received))).toEqual(new Set(ids(all)));
  }, 120_000);

  it("a memory alarm blocks publishing: publish returns by its deadline, fails fast while blocked, recovers after", async () => {
    const topic = await queue();
    const p = publisher({ timeoutMs: 3_000 });
    const before = [makeEntry({ topic, key: "a" }), makeEntry({ topic, key: "b" })];
    expect(statuses(await p.publish(before))).toEqual(["published", "published"]);
    const watermark = await memoryWatermark();
    const during = [makeEntry({ topic, key: "a" }), makeEntry({ topic, key: "b" }), makeEntry({ topic, key: null })];
    try {
      await setMemoryWatermark("0.0000001");
      await waitFor(memoryAlarmOn, 30_000, "the memory alarm");
      const started = Date.now();
      const first = await p.publish(during);
      const firstMs = Date.now() - started;
      expect(statuses(first)).toEqual(["transient", "transient", "transient"]);
      expect(firstMs).toBeLessThan(3_000 + 2_000);
      // connection.blocked has arrived by now: nothing is written, the call returns at once.
      await waitFor(async () => typeOf((await p.publish(during))[0]) === "BLOCKED", 10_000, "BLOCKED outcomes");
      const fast = Date.now();
      const blocked = await p.publish(during);
      expect(Date.now() - fast).toBeLessThan(500);
      expect(blocked.map(typeOf)).toEqual(["BLOCKED", "BLOCKED", "BLOCKED"]);
    } finally {
      await setMemoryWatermark(watermark);
    }
    await waitFor(async () => !(await memoryAlarmOn()), 30_000, "the alarm to clear");
    await waitFor(
      async () => statuses(await p.publish(during)).every((s) => s === "published"),
      30_000,
      "publishing after the alarm",
      200,
    );
    const received = await new QueueReader().receive(topic, before.length + during.length, 10_000);
    expect(new Set(ids(received))).toEqual(new Set(ids([...before, ...during])));
  }, 120_000);

  it("broker stop and start: transient while down, then the publisher reconnects; persistent messages survive", async () => {
    const topic = await queue();
    const p = publisher({ timeoutMs: 5_000 });
    const before = Array.from({ length: 50 }, (_, n) => makeEntry({ topic, key: `k${n % 5}` }));
    expect(statuses(await p.publish(before)).every((s) => s === "published")).toBe(true);
    const during = Array.from({ length: 10 }, (_, n) => makeEntry({ topic, key: `k${n % 5}` }));
    await restartBroker(async () => {
      const outcomes = await p.publish(during);
      expect(outcomes.every((o) => o.status === "transient")).toBe(true);
      expect(new Set(outcomes.map(typeOf))).toSatisfy((types: Set<unknown>) =>
        [...types].every((t) => t === undefined || t === "CONNECTION" || t === "CHANNEL_CLOSED"),
      );
    });
    await waitFor(
      async () => statuses(await p.publish(during)).every((s) => s === "published"),
      60_000,
      "publishing after the restart",
      500,
    );
    const received = await new QueueReader().receive(topic, before.length + during.length, 30_000);
    expect(new Set(ids(received))).toEqual(new Set(ids([...before, ...during])));
  }, 180_000);
});
