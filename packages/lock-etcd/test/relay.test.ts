// A relay leading with this backend on the client settings the README recommends (a 1 s dial timeout): it leads,
// publishes, and releases the lock on stop(). (The README's Quick start itself runs outside the workspace:
// scripts/check-outside.sh.)
import { uniqueName } from "@outbox/conformance";
import { OutboxRelay } from "@outbox/core";
import { MemoryPublisher, MemoryStore } from "@outbox/memory";
import { afterAll, expect, it } from "vitest";
import { createEtcdLockBackend } from "../src/index.js";
import { closeClients, newClient } from "./support.js";

afterAll(closeClients);

it("a relay on the README's client settings leads, publishes, then releases the lock on stop()", async () => {
  const name = uniqueName("relay");
  const etcd = newClient({ dialTimeout: 1_000 });
  const store = new MemoryStore();
  const publisher = new MemoryPublisher();
  const relay = new OutboxRelay({
    store,
    publisher,
    pollMs: 20,
    leader: { backend: createEtcdLockBackend({ client: etcd }), name, ttlMs: 10_000 },
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
    expect(await newClient().get(`outbox/lock/${name}`).string()).toBeNull(); // released by stop()
  } finally {
    await relay.stop();
  }
});
