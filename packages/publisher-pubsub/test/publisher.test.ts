// The publisher against Google's Pub/Sub fake server (scripts/services.sh start pubsub), read
// back by real subscriptions with message ordering on.

import type { PubSub } from "@google-cloud/pubsub";
import { bytesEqual, keyOrderViolations, makeEntry } from "@outbox/conformance";
import { type OutboxEntry, type OutboxError, OutboxHeader, type PublishOutcome } from "@outbox/core";
import { TcpProxy } from "@outbox/test-support/tcp-proxy";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createPubSubPublisher, type PubSubClientLike, PubSubLimits } from "../src/index.js";
import {
  emulatorHost,
  killServer,
  newPubSub,
  projectId,
  startServer,
  TopicReader,
  uniqueTopic,
} from "./support/pubsub.js";

const statuses = (outcomes: PublishOutcome[]) => outcomes.map((outcome) => outcome.status);
const errorOf = (outcome: PublishOutcome | undefined) => (outcome as { error: OutboxError }).error;
const text = (value: string) => new TextEncoder().encode(value);

let admin: PubSub;
const readers: TopicReader[] = [];
const clients: PubSub[] = [];

beforeAll(() => {
  admin = newPubSub();
});

afterAll(async () => {
  for (const reader of readers) await reader.close();
  for (const client of clients) await client.close();
  await admin.close();
});

async function reader(): Promise<TopicReader> {
  const created = await TopicReader.create(admin);
  readers.push(created);
  return created;
}

function client(endpoint?: string): PubSub {
  const created = newPubSub(endpoint);
  clients.push(created);
  return created;
}

/** Counts publishMessage calls of the topics a publisher makes. */
function counting(pubsub: PubSub): { pubsub: PubSubClientLike; handed: () => number } {
  let handed = 0;
  return {
    pubsub: {
      topic(name, options) {
        const topic = pubsub.topic(name, options);
        return {
          publishMessage: (message) => {
            handed += 1;
            return topic.publishMessage(message);
          },
          resumePublishing: (key) => topic.resumePublishing(key),
          flush: () => topic.flush(),
        };
      },
    },
    handed: () => handed,
  };
}

describe("publisher-pubsub on the pstest fake server", () => {
  it("delivers data byte for byte, headers and metadata as attributes, the key as ordering key", async () => {
    const r = await reader();
    const publisher = createPubSubPublisher({ pubsub: client() });
    const binary = new Uint8Array(256).map((_, i) => i);
    const entries = [
      makeEntry({
        topic: r.topic,
        key: "clé-日本語-🚀",
        payload: text("naïve — 🚀🧪"),
        headers: { "x-unicode": "ü 🚀" },
      }),
      makeEntry({ topic: r.topic, key: "bin", payload: binary, headers: { empty: "" } }),
      makeEntry({ topic: r.topic, key: null, payload: new Uint8Array(0) }),
      makeEntry({ topic: r.topic, key: "big", payload: new Uint8Array(5 * 1024 * 1024).fill(9) }),
    ];
    expect(statuses(await publisher.publish(entries))).toEqual(entries.map(() => "published"));
    const received = await r.receive(entries.length, 30_000);
    expect(received).toHaveLength(entries.length);
    for (const entry of entries) {
      const message = received.find((m) => m.idempotencyKey === entry.idempotencyKey);
      expect(message, `entry ${entry.id}`).toBeDefined();
      expect(bytesEqual(message?.payload as Uint8Array, entry.payload)).toBe(true);
      expect(message?.orderingKey).toBe(entry.key ?? "");
      expect(message?.headers).toEqual({
        ...entry.headers,
        [OutboxHeader.Id]: entry.id,
        [OutboxHeader.IdempotencyKey]: entry.idempotencyKey,
      });
    }
    await publisher.close();
  });

  it("routes by full topic name; the original topic travels in outbox-topic", async () => {
    const r = await reader();
    const publisher = createPubSubPublisher({
      pubsub: client(),
      topic: () => `projects/${projectId}/topics/${r.topic}`,
    });
    const entry = makeEntry({ topic: "orders.created", key: "k" });
    expect(statuses(await publisher.publish([entry]))).toEqual(["published"]);
    const [message] = await r.receive(1, 30_000);
    expect(message?.headers[OutboxHeader.Topic]).toBe("orders.created");
    await publisher.close();
  });

  it("runs of several keys in one call arrive in key order; 20 calls, 600 entries", async () => {
    const r = await reader();
    const publisher = createPubSubPublisher({ pubsub: client() });
    let seq = 0;
    for (let call = 0; call < 20; call++) {
      // Each call: runs of 5 entries for 5 keys, interleaved, plus keyless entries.
      const entries: OutboxEntry[] = [];
      for (let i = 0; i < 5; i++) {
        for (const key of ["a", "b", "c", "d", "e", null]) {
          entries.push(makeEntry({ topic: r.topic, key, headers: { "x-seq": String(seq++) } }));
        }
      }
      expect(statuses(await publisher.publish(entries)).every((s) => s === "published")).toBe(true);
    }
    const received = await r.receive(seq, 60_000);
    expect(received).toHaveLength(seq);
    const order = received.filter((m) => m.key !== null).map((m) => ({ key: m.key, seq: Number(m.headers["x-seq"]) }));
    expect(keyOrderViolations(order)).toEqual([]);
    await publisher.close();
  });

  it("an unknown topic fails permanently (NOT_FOUND), the rest of its run is held back, neighbours publish; the key publishes again once the topic exists", async () => {
    const r = await reader();
    const missing = uniqueTopic("outbox-missing");
    const publisher = createPubSubPublisher({ pubsub: client(), timeoutMs: 10_000 });
    const entries = [
      makeEntry({ topic: r.topic, key: "a" }),
      makeEntry({ topic: missing, key: "m" }),
      makeEntry({ topic: missing, key: "m" }),
      makeEntry({ topic: missing, key: null }),
      makeEntry({ topic: r.topic, key: null }),
    ];
    const started = Date.now();
    const outcomes = await publisher.publish(entries);
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(statuses(outcomes)).toEqual(["published", "permanent", "transient", "permanent", "published"]);
    expect(errorOf(outcomes[1]).details).toMatchObject({ type: "NOT_FOUND", kind: "permanent", topic: missing });
    expect(errorOf(outcomes[2]).details.reason).toBe("held-back");
    // The client paused key "m" after the failure; the publisher resumed it before returning.
    const late = await TopicReader.create(admin, missing);
    readers.push(late);
    expect(statuses(await publisher.publish([entries[2] as OutboxEntry]))).toEqual(["published"]);
    expect((await late.receive(1, 30_000)).map((m) => m.idempotencyKey)).toEqual([entries[2]?.idempotencyKey]);
    expect((await r.receive(2, 30_000)).length).toBe(2);
    await publisher.close();
  });

  it("an oversize message and over-limit attributes fail permanently without being sent", async () => {
    const r = await reader();
    const { pubsub, handed } = counting(client());
    const publisher = createPubSubPublisher({ pubsub });
    const entries = [
      makeEntry({ topic: r.topic, key: "a", payload: new Uint8Array(PubSubLimits.maxMessageBytes + 1) }),
      makeEntry({ topic: r.topic, key: "a" }),
      makeEntry({ topic: r.topic, key: "b", headers: { big: "v".repeat(1025) } }),
      makeEntry({ topic: r.topic, key: "c" }),
    ];
    const outcomes = await publisher.publish(entries);
    expect(statuses(outcomes)).toEqual(["permanent", "transient", "permanent", "published"]);
    expect(errorOf(outcomes[0]).details.type).toBe("INVALID_ARGUMENT");
    expect(handed()).toBe(1);
    expect((await r.receive(2, 3_000)).map((m) => m.idempotencyKey)).toEqual([entries[3]?.idempotencyKey]);
    await publisher.close();
  });

  it("an abort mid-flight (partition) returns at once, all transient; publishing recovers afterwards", async () => {
    const r = await reader();
    const proxy = await TcpProxy.start(emulatorHost);
    const publisher = createPubSubPublisher({ pubsub: client(proxy.endpoint), timeoutMs: 10_000 });
    try {
      expect(statuses(await publisher.publish([makeEntry({ topic: r.topic, key: "warm" })]))).toEqual(["published"]);
      proxy.blackhole();
      const controller = new AbortController();
      const call = publisher.publish(
        [makeEntry({ topic: r.topic, key: "a" }), makeEntry({ topic: r.topic, key: null })],
        { signal: controller.signal },
      );
      setTimeout(() => controller.abort(new Error("lease ends")), 200);
      const started = Date.now();
      const outcomes = await call;
      expect(Date.now() - started).toBeLessThan(2_000);
      expect(statuses(outcomes)).toEqual(["transient", "transient"]);
      expect(errorOf(outcomes[0]).details.type).toBe("TIMEOUT");
      proxy.restore();
      const after = makeEntry({ topic: r.topic, key: "a" });
      let outcome: PublishOutcome | undefined;
      for (let attempt = 0; attempt < 20 && outcome?.status !== "published"; attempt++) {
        outcome = (await publisher.publish([after]))[0];
      }
      expect(outcome?.status).toBe("published");
      // The aborted entries may land too (the client retried them): at-least-once.
      await r.until((delivered) => delivered.some((m) => m.idempotencyKey === after.idempotencyKey), 30_000);
    } finally {
      await publisher.close();
      await proxy.close();
    }
  });

  it("the fake server killed mid-call and restarted: transient outcomes, never permanent; the same entries publish after it is back, in key order", async () => {
    const r = await reader();
    const publisher = createPubSubPublisher({ pubsub: client(), timeoutMs: 4_000 });
    const keys = Array.from({ length: 20 }, (_, i) => `k${i}`);
    let seq = 0;
    const batch = () =>
      keys.flatMap((key) =>
        [0, 1, 2].map(() => makeEntry({ topic: r.topic, key, headers: { "x-seq": String(seq++) } })),
      );
    const first = batch();
    expect(statuses(await publisher.publish(first)).every((s) => s === "published")).toBe(true);
    expect(await r.receive(first.length, 30_000)).toHaveLength(first.length);

    // Kill while a call is in flight; the server stays down until the call returned.
    const second = batch();
    const call = publisher.publish(second);
    const killedAt = Date.now();
    await killServer();
    const outcomes = await call;
    expect(statuses(outcomes)).not.toContain("permanent");
    // Per key: a published prefix, then the failed entry, then held back ones.
    for (const key of keys) {
      const run = second.map((e, i) => ({ e, o: outcomes[i] as PublishOutcome })).filter(({ e }) => e.key === key);
      const firstFailure = run.findIndex(({ o }) => o.status !== "published");
      if (firstFailure >= 0) expect(run.slice(firstFailure).every(({ o }) => o.status === "transient")).toBe(true);
    }
    await startServer();
    const downMs = Date.now() - killedAt;
    // In memory: the restarted server has no topics (a publish now would be NOT_FOUND:
    // permanent; the real service keeps its topics). Create it again, as it was.
    await r.recreate();
    // What a relay does next: each key again from its first unpublished entry, plus new entries.
    const retry = second.filter((_, i) => outcomes[i]?.status !== "published");
    const third = batch();
    // The client reconnects on its own; transient outcomes until it has, retried like a relay.
    let pending = [...retry, ...third];
    const seen: string[] = [];
    for (let attempt = 0; attempt < 20 && pending.length > 0; attempt++) {
      const result = await publisher.publish(pending);
      expect(statuses(result)).not.toContain("permanent");
      for (const o of result) if (o.status !== "published") seen.push(String(errorOf(o).details.type));
      pending = pending.filter((_, i) => result[i]?.status !== "published");
      if (pending.length > 0) await new Promise((resolve) => setTimeout(resolve, 250));
    }
    expect(pending).toEqual([]);
    const received = await r.receive(first.length + retry.length + third.length, 30_000);
    const afterRestart = new Set([...retry, ...third].map((e) => e.idempotencyKey));
    expect(received.filter((m) => afterRestart.has(m.idempotencyKey))).toHaveLength(afterRestart.size);
    const order = received.map((m) => ({ key: m.key, seq: Number(m.headers["x-seq"]) }));
    expect(keyOrderViolations(order)).toEqual([]);
    console.log(
      `[restart] down ${downMs} ms; in-flight call: ${outcomes.filter((o) => o.status === "published").length} published, ${retry.length} transient (${[...new Set(outcomes.filter((o) => o.status !== "published").map((o) => errorOf(o).details.type ?? errorOf(o).details.reason))]}); after restart: ${seen.length} transient (${[...new Set(seen)]}) before all published`,
    );
    await publisher.close();
  }, 120_000);
});
