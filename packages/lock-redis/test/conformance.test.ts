import {
  describeLockConformance,
  describeRelayConformance,
  memoryStoreHarness,
  wrapLockBackend,
} from "@outbox/conformance";
import { closeClient, closeClients, newClient, restartRedis, waitReady } from "@outbox/test-support/redis";
import { sleep } from "@outbox/test-support/wait";
import type { Redis } from "ioredis";
import { afterAll } from "vitest";
import { createRedisLockBackend } from "../src/index.js";

afterAll(closeClients);

describeLockConformance({
  name: "lock-redis (ioredis, real Redis)",
  ttlMs: 1_000,
  // This package's test server: restarting it is part of what the suite should prove.
  allowServerRestarts: true,
  async create() {
    const owned: Redis[] = [];
    const connect = async () => {
      const client = await newClient();
      owned.push(client);
      return createRedisLockBackend({ client });
    };
    const backend = await connect();
    const client = owned[0] as Redis;
    return {
      backend,
      // Real Redis expires keys on real time.
      elapse: sleep,
      async restart() {
        await restartRedis();
        await waitReady(client);
      },
      peer: connect,
      // The key gone (evicted, flushed, a failover that lost it).
      async expire(name: string) {
        await client.del(`outbox:lock:{${name}}`);
      },
      // The same while the backend's connection stays open: the key is gone, nothing else.
      async dropHolding(name: string) {
        await client.del(`outbox:lock:{${name}}`);
      },
      async teardown() {
        await Promise.all(owned.map(closeClient));
      },
    };
  },
});

describeRelayConformance({
  name: "MemoryStore + lock-redis (real Redis)",
  // The store is the in-memory reference on the kit's ManualClock; the leader lock is real Redis.
  createStore: memoryStoreHarness,
  async createLockBackend() {
    const client = await newClient();
    const backend = createRedisLockBackend({ client });
    return {
      backend: wrapLockBackend(backend, {
        async close() {
          await backend.close();
          await closeClient(client);
        },
      }),
      // The kit lets the TTL pass on its manual clock; Redis expires on real time, so end the holding now.
      async expire(name: string) {
        await client.del(`outbox:lock:{${name}}`);
      },
    };
  },
});
