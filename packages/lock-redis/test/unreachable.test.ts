import { uniqueName, wrapLockBackend, wrapStore } from "@outbox/conformance";
import { type LockGrant, OutboxRelay, type OutboxStore } from "@outbox/core";
import { MemoryPublisher, MemoryStore } from "@outbox/memory";
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
      const redisBackend = createRedisLockBackend({ client });
      // When each grant or renewal that Redis confirmed was sent: the server-side lease runs
      // at least ttl from then, so the relay must stop claiming at that instant + ttl - margin.
      const confirmedSentAt: number[] = [];
      const backend = wrapLockBackend(redisBackend, {
        async tryAcquire(n, holder, ttl) {
          const sentAt = Date.now();
          const token = await redisBackend.tryAcquire(n, holder, ttl);
          if (token !== null) confirmedSentAt.push(sentAt);
          return token;
        },
        async renew(n, holder, ttl) {
          const sentAt = Date.now();
          const renewed = await redisBackend.renew(n, holder, ttl);
          if (renewed) confirmedSentAt.push(sentAt);
          return renewed;
        },
      });
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
        const stopClaimingAt = (confirmedSentAt.at(-1) as number) + ttlMs - marginMs;
        // The relay gave up before anyone else could get the lock: its last claim started
        // before the validity it computed, which ends `margin` before the server-side lease.
        expect(Math.max(...claims)).toBeLessThan(stopClaimingAt);
        // The loss was reported promptly: about one validity period after the cut, with room
        // for a loaded machine's late timers (the bound above is the one that keeps data safe).
        expect(lostAt - cutAt).toBeLessThanOrEqual(ttlMs - marginMs + 1_000);

        await enqueue(3);
        // Until the server-side lease has run out, and beyond, the cut-off relay claims nothing.
        await waitFor(async () => (await admin.pttl(redisBackend.lockKey(name))) === -2, 5_000, "server-side expiry");
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
