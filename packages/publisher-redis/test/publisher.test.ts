import { makeEntry, uniqueName } from "@outbox/conformance";
import { OutboxError, OutboxErrorCode, type PublishOutcome } from "@outbox/core";
import { closeClients, newClient, RedisProxy, restartRedis } from "@outbox/test-support/redis";
import { sleep } from "@outbox/test-support/wait";
import type { Redis } from "ioredis";
import { ReplyError } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { classifyRedisError, createRedisStreamPublisher, decodeStreamFields, StreamField } from "../src/index.js";
import { readStream } from "./support.js";

let client: Redis;
let admin: Redis;

beforeAll(async () => {
  client = await newClient();
  admin = await newClient({ maxRetriesPerRequest: null });
});
afterAll(closeClients);

const statuses = (outcomes: PublishOutcome[]) => outcomes.map((outcome) => outcome.status);

describe("createRedisStreamPublisher", () => {
  it("writes one stream entry per outbox entry with the documented fields", async () => {
    const stream = uniqueName("stream");
    const publisher = createRedisStreamPublisher({ client });
    const entry = makeEntry({
      topic: stream,
      key: "order-1",
      payload: new Uint8Array([0, 255, 1]),
      headers: { "x-ünïcode": "🚀", empty: "" },
    });
    expect(statuses(await publisher.publish([entry]))).toEqual(["published"]);
    const [[, fields]] = (await admin.xrangeBuffer(stream, "-", "+")) as [[Buffer, Buffer[]]];
    const names = fields.filter((_, i) => i % 2 === 0).map((name) => name.toString());
    expect(names).toEqual([
      StreamField.Id,
      StreamField.Topic,
      StreamField.IdempotencyKey,
      StreamField.Key,
      StreamField.Headers,
      StreamField.Payload,
    ]);
    expect(decodeStreamFields(fields)).toEqual({
      id: entry.id,
      topic: stream,
      key: "order-1",
      idempotencyKey: entry.idempotencyKey,
      headers: { "x-ünïcode": "🚀", empty: "" },
      payload: new Uint8Array([0, 255, 1]),
    });
    // Keyless entries carry no key field at all (so an empty-string key stays distinguishable).
    await publisher.publish([makeEntry({ topic: stream, key: null })]);
    const all = (await admin.xrangeBuffer(stream, "-", "+")) as Array<[Buffer, Buffer[]]>;
    expect(all).toHaveLength(2);
    expect(decodeStreamFields((all[1] as [Buffer, Buffer[]])[1]).key).toBeNull();
    await admin.del(stream);
  });

  it("sends a batch as one pipeline, without single commands on the client", async () => {
    const stream = uniqueName("stream");
    const calls: string[] = [];
    const spy = new Proxy(client, {
      get(target, property, receiver) {
        const value = Reflect.get(target, property, receiver);
        if (typeof value !== "function") return value;
        return (...args: unknown[]) => {
          calls.push(String(property));
          return value.apply(target, args);
        };
      },
    });
    const publisher = createRedisStreamPublisher({ client: spy });
    const entries = Array.from({ length: 50 }, () => makeEntry({ topic: stream }));
    expect(statuses(await publisher.publish(entries)).every((status) => status === "published")).toBe(true);
    expect(calls).toEqual(["pipeline"]);
    expect(await admin.xlen(stream)).toBe(50);
    await admin.del(stream);
  });

  it("routes entries with the stream option", async () => {
    const prefix = uniqueName("app");
    const publisher = createRedisStreamPublisher({ client, stream: (entry) => `${prefix}:${entry.topic}` });
    await publisher.publish([makeEntry({ topic: "orders" }), makeEntry({ topic: "users" })]);
    expect(await admin.xlen(`${prefix}:orders`)).toBe(1);
    expect(await admin.xlen(`${prefix}:users`)).toBe(1);
    await admin.del(`${prefix}:orders`, `${prefix}:users`);
  });

  it("an entry without a stream name fails permanently on its own", async () => {
    const stream = uniqueName("stream");
    const publisher = createRedisStreamPublisher({
      client,
      stream: (entry) => {
        if (entry.key === "bad") throw new Error("no route");
        return entry.key === "empty" ? "" : stream;
      },
    });
    const outcomes = await publisher.publish([
      makeEntry({ topic: "t", key: "a" }),
      makeEntry({ topic: "t", key: "bad" }),
      makeEntry({ topic: "t", key: "empty" }),
      makeEntry({ topic: "t", key: "b" }),
    ]);
    expect(statuses(outcomes)).toEqual(["published", "permanent", "permanent", "published"]);
    expect(await admin.xlen(stream)).toBe(2);
    await admin.del(stream);
  });

  it("trims with MAXLEN ~", async () => {
    const stream = uniqueName("stream");
    const publisher = createRedisStreamPublisher({ client, maxLen: 10 });
    for (let batch = 0; batch < 10; batch++) {
      await publisher.publish(Array.from({ length: 100 }, () => makeEntry({ topic: stream })));
    }
    const length = await admin.xlen(stream);
    expect(length).toBeGreaterThanOrEqual(10);
    // Approximate trimming removes whole radix-tree nodes (100 entries each by default).
    expect(length).toBeLessThanOrEqual(10 + 100);
    await admin.del(stream);
  });

  it("payloads over maxPayloadBytes fail permanently without a round trip", async () => {
    const stream = uniqueName("stream");
    const publisher = createRedisStreamPublisher({ client, maxPayloadBytes: 4 });
    expect(publisher.capabilities.maxPayloadBytes).toBe(4);
    const outcomes = await publisher.publish([
      makeEntry({ topic: stream, payload: new Uint8Array(4) }),
      makeEntry({ topic: stream, payload: new Uint8Array(5) }),
    ]);
    expect(statuses(outcomes)).toEqual(["published", "permanent"]);
    const error = (outcomes[1] as { error: unknown }).error;
    expect(OutboxError.is(error, OutboxErrorCode.PublishFailed)).toBe(true);
    await admin.del(stream);
  });

  it("classifies Redis refusals: WRONGTYPE and ERR permanent, OOM/READONLY/LOADING and connection errors transient", () => {
    const reply = (message: string) => new ReplyError(message) as Error;
    expect(classifyRedisError(reply("WRONGTYPE Operation against a key holding the wrong kind of value")).status).toBe(
      "permanent",
    );
    expect(classifyRedisError(reply("ERR Invalid stream ID specified as stream command argument")).status).toBe(
      "permanent",
    );
    expect(classifyRedisError(reply("NOPERM this user has no permissions")).status).toBe("permanent");
    for (const message of [
      "OOM command not allowed when used memory > 'maxmemory'.",
      "READONLY You can't write against a read only replica.",
      "LOADING Redis is loading the dataset in memory",
      "BUSY Redis is busy running a script.",
    ]) {
      expect(classifyRedisError(reply(message)).status).toBe("transient");
    }
    expect(classifyRedisError(new Error("Connection is closed.")).status).toBe("transient");
  });

  it("a server-side refusal (OOM) is transient for that entry", async () => {
    const stream = uniqueName("stream");
    const publisher = createRedisStreamPublisher({ client });
    const [maxmemory] = ((await admin.config("GET", "maxmemory")) as string[]).slice(1);
    try {
      await admin.config("SET", "maxmemory", "1");
      const outcomes = await publisher.publish([makeEntry({ topic: stream })]);
      expect(statuses(outcomes)).toEqual(["transient"]);
      expect(String((outcomes[0] as { error: unknown }).error)).toContain("OOM");
    } finally {
      await admin.config("SET", "maxmemory", maxmemory ?? "0");
    }
    expect(statuses(await publisher.publish([makeEntry({ topic: stream })]))).toEqual(["published"]);
    await admin.del(stream);
  });

  it("a batch Redis never answers turns transient after timeoutMs", async () => {
    const proxy = await RedisProxy.start();
    try {
      const cutOff = await newClient({ maxRetriesPerRequest: null }, proxy.url);
      const publisher = createRedisStreamPublisher({ client: cutOff, timeoutMs: 300 });
      const stream = uniqueName("stream");
      proxy.cut("blackhole");
      const started = Date.now();
      const outcomes = await publisher.publish([makeEntry({ topic: stream }), makeEntry({ topic: stream })]);
      expect(statuses(outcomes)).toEqual(["transient", "transient"]);
      expect(Date.now() - started).toBeLessThan(2_000);
      cutOff.disconnect();
    } finally {
      await proxy.close();
    }
  });

  it("stops waiting when the relay's lease signal aborts mid-flight: unconfirmed entries are transient", async () => {
    const proxy = await RedisProxy.start();
    try {
      const cutOff = await newClient({ maxRetriesPerRequest: null }, proxy.url);
      // A long own timeout: only the signal can end this publish early.
      const publisher = createRedisStreamPublisher({ client: cutOff, timeoutMs: 60_000 });
      const stream = uniqueName("stream");
      proxy.cut("blackhole");
      const lease = new AbortController();
      const publishing = publisher.publish([makeEntry({ topic: stream }), makeEntry({ topic: stream })], {
        signal: lease.signal,
      });
      lease.abort(new Error("the lease is about to end"));
      expect(statuses(await publishing)).toEqual(["transient", "transient"]);
      cutOff.disconnect();
    } finally {
      await proxy.close();
    }
  });

  it("while Redis is down entries fail transiently; after a restart the same publisher publishes", async () => {
    const stream = uniqueName("stream");
    const publisher = createRedisStreamPublisher({ client });
    expect(statuses(await publisher.publish([makeEntry({ topic: stream })]))).toEqual(["published"]);
    let restarted = false;
    const restarting = restartRedis().then(() => {
      restarted = true;
    });
    const seen = new Set<string>();
    let outcome: PublishOutcome | undefined;
    const deadline = Date.now() + 60_000;
    while (Date.now() < deadline) {
      [outcome] = await publisher.publish([makeEntry({ topic: stream, key: "around-restart" })]);
      seen.add(outcome?.status ?? "none");
      if (restarted && outcome?.status === "published") break;
      await sleep(50);
    }
    await restarting;
    expect(outcome?.status).toBe("published");
    expect([...seen].filter((status) => status !== "published" && status !== "transient")).toEqual([]);
    // The restart wiped the stream (no persistence); what was published after it is there.
    expect((await readStream(admin, stream, 1, 5_000)).length).toBeGreaterThanOrEqual(1);
    await admin.del(stream);
  });

  it("rejects bad options with OUTBOX_INVALID_OPTIONS", () => {
    for (const options of [
      {},
      { client, maxLen: 0 },
      { client, maxLen: 1.5 },
      { client, timeoutMs: -1 },
      { client, stream: "fixed" },
    ]) {
      expect(() => createRedisStreamPublisher(options as never)).toThrow(
        expect.objectContaining({ code: OutboxErrorCode.InvalidOptions }),
      );
    }
  });

  it("close() leaves the caller's client open", async () => {
    const publisher = createRedisStreamPublisher({ client });
    await publisher.close();
    await expect(publisher.publish([])).rejects.toMatchObject({ code: OutboxErrorCode.Closed });
    expect(await client.ping()).toBe("PONG");
  });
});
