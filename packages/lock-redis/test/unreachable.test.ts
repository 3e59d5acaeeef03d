import { uniqueName, wrapStore } from "@outbox/conformance";
import { type LockGrant, MemoryPublisher, MemoryStore, OutboxRelay, type OutboxStore } from "@outbox/core";
import { closeClients, failFast, newClient, RedisProxy } from "@outbox/test-support/redis";
import { waitFor } from "@outbox/test-support/wait";
import type { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createRedisLockBackend } from "../src/index.js";

let admin: Redis;
beforeAll(async () => {
  admin = await newClient();
});
afterAll(closeClients);

const ttlMs = 1_500;
const marginMs = Math.floor(ttlMs / 5); // DistributedLock's default safety margin

describe("an unreachable Redis means 'not held'", () => {
  for (const mode of ["refuse", "blackhole"] as const) {
    it(`the relay stops draining before the server-side lease ends, and resumes when Redis is back (${mode})`, async () => {
      const proxy = await RedisProxy.start();
      const client = await newClient(failFast, proxy.url);
      const backend = createRedisLockBackend({ client });
      const name = uniqueName("leader");
      const memory = new MemoryStore();
      const claims: number[] = [];
      const store = wrapStore(memory as OutboxStore<never>, {
        claim: (request) => {
          claims.push(Date.now());
          return memory.claim(request);
        },
      });
      const broker = new MemoryPublisher();
      const relay = new OutboxRelay({ store, publisher: broker, pollMs: 50, leader: { backend, name, ttlMs } });
      const gained: LockGrant[] = [];
      const lost: number[] = [];
      relay.on("leadershipGained", ({ grant }) => gained.push(grant));
      relay.on("leadershipLost", () => lost.push(Date.now()));
      relay.on("error", () => {}); // unreachable-lock errors are expected here
      const enqueue = (count: number) =>
        memory.transaction((tx) =>
          memory.enqueue(
            tx,
            Array.from({ length: count }, (_, i) => ({ topic: "t", payload: `p${i}` })),
          ),
        );
      try {
        relay.start();
        await waitFor(() => gained.length === 1, 10_000, "leadership");
        await enqueue(5);
        await waitFor(() => broker.messages.length === 5, 10_000, "first entries published");

        const cutAt = Date.now();
        proxy.cut(mode);
        await waitFor(() => lost.length === 1, 5_000, "leadershipLost");
        const lostAt = lost[0] as number;
        // The server still holds the lease: the relay gave up before anyone else could get it.
        expect(await admin.pttl(backend.lockKey(name))).toBeGreaterThan(0);
        // ...and no later than one validity period (ttl - margin) after the last renewal.
        expect(lostAt - cutAt).toBeLessThanOrEqual(ttlMs - marginMs + 150);

        await enqueue(3);
        // Until the server-side lease has run out, and beyond, the cut-off relay claims nothing.
        await waitFor(async () => (await admin.pttl(backend.lockKey(name))) === -2, 5_000, "server-side expiry");
        expect(claims.filter((at) => at > lostAt)).toEqual([]);
        expect(broker.messages).toHaveLength(5);

        proxy.restore();
        await waitFor(() => gained.length === 2, 15_000, "leadership regained");
        expect((gained[1] as LockGrant).token > (gained[0] as LockGrant).token).toBe(true);
        await waitFor(() => broker.messages.length === 8, 10_000, "entries published after recovery");
      } finally {
        await relay.stop();
        client.disconnect();
        await proxy.close();
      }
    });
  }
});
