// A relay leading with this backend on the client settings the README recommends (fail fast, no offline queue,
// lazy connect): it leads, publishes, and releases the lock on stop(), leaving the fence counter in place.
// (The README's Quick start itself runs outside the workspace: scripts/check-outside.sh.)
import { uniqueName } from "@outbox/conformance";
import { OutboxRelay } from "@outbox/core";
import { MemoryPublisher, MemoryStore } from "@outbox/memory";
import { closeClients, newClient, redisUrl } from "@outbox/test-support/redis";
import { Redis } from "ioredis";
import { afterAll, expect, it } from "vitest";
import { createRedisLockBackend } from "../src/index.js";

afterAll(closeClients);

it("a relay on the README's client settings leads, publishes, then releases the lock on stop()", async () => {
  const name = uniqueName("relay");
  const redis = new Redis(redisUrl, {
    maxRetriesPerRequest: 1,
    enableOfflineQueue: false,
    commandTimeout: 1_000,
    lazyConnect: true,
  });
  await redis.connect();
  const store = new MemoryStore();
  const publisher = new MemoryPublisher();
  const relay = new OutboxRelay({
    store,
    publisher,
    pollMs: 20,
    leader: { backend: createRedisLockBackend({ client: redis }), name, ttlMs: 10_000 },
  });
  const tokens: bigint[] = [];
  relay.on("leadershipGained", ({ grant }) => tokens.push(grant.token));
  try {
    relay.start();
    await store.transaction((tx) => store.enqueue(tx, { topic: "orders", key: "order-1", payload: "created" }));
    const deadline = Date.now() + 10_000;
    while (publisher.messages.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    expect(publisher.messages.map((message) => message.key)).toEqual(["order-1"]);
    expect(tokens).toHaveLength(1);
    await relay.stop();
    const admin = await newClient();
    expect(await admin.exists(`outbox:lock:{${name}}`)).toBe(0); // released by stop()
    expect(await admin.exists(`outbox:lock:{${name}}:fence`)).toBe(1); // tokens keep increasing after it
  } finally {
    await relay.stop();
    await redis.quit();
  }
});
