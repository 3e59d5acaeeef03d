import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { closeSync, existsSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  describeLockConformance,
  describeRelayConformance,
  lockChecks,
  memoryStoreHarness,
  runChecks,
  wrapLockBackend,
} from "@outbox/conformance";
import { closeClient, closeClients, failFast, newClient, restartRedis, waitReady } from "@outbox/test-support/redis";
import { sleep, waitFor } from "@outbox/test-support/wait";
import type { Redis } from "ioredis";
import { afterAll, describe, expect, it } from "vitest";
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

/**
 * A private redis-server whose wall clock (TIME, key expiry) the test steps back: the shared
 * server runs on the machine's clock, which no test may touch. An LD_PRELOAD shim
 * (fixtures/clock-shift.c, built here with the system C compiler) adds an offset to gettimeofday.
 */
async function redisOnSteppableClock() {
  const dir = mkdtempSync(join(tmpdir(), "outbox-redis-clock-"));
  const shim = join(dir, "clock-shift.so");
  const source = fileURLToPath(new URL("./fixtures/clock-shift.c", import.meta.url));
  execFileSync("cc", ["-shared", "-fPIC", "-O2", "-o", shim, source, "-ldl"]);
  const offsetFile = join(dir, "offset-us");
  writeFileSync(offsetFile, Buffer.alloc(8));
  const socket = join(dir, "redis.sock");
  const server: ChildProcess = spawn(
    "redis-server",
    ["--port", "0", "--unixsocket", socket, "--save", "", "--appendonly", "no"],
    { env: { ...process.env, LD_PRELOAD: shim, OUTBOX_CLOCK_OFFSET_FILE: offsetFile }, stdio: "ignore" },
  );
  const exited = new Promise<void>((resolve) => server.once("exit", () => resolve()));
  let offsetUs = 0n;
  return {
    async connect(): Promise<Redis> {
      await waitFor(() => existsSync(socket), 10_000, "the private redis-server's socket");
      return newClient(failFast, socket);
    },
    /** Rewritten in place: the server maps the file, and a truncated file would fault it. */
    stepBack(ms: number): void {
      offsetUs -= BigInt(ms) * 1_000n;
      const bytes = Buffer.alloc(8);
      bytes.writeBigInt64LE(offsetUs);
      const fd = openSync(offsetFile, "r+");
      try {
        writeSync(fd, bytes, 0, 8, 0);
      } finally {
        closeSync(fd);
      }
    },
    async stop(): Promise<void> {
      server.kill();
      await exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

// The clock shim is an LD_PRELOAD library (glibc symbol interposition), so Linux only. CI and this project's
// machines run Linux: there it always runs.
describe.skipIf(process.platform !== "linux")("lock conformance: lock-redis on a Redis whose clock steps back", () => {
  it("tokens-clock-step-back: fencing tokens strictly increase when the server's clock steps back", async () => {
    const redis = await redisOnSteppableClock();
    try {
      const only = { "tokens-clock-step-back": lockChecks["tokens-clock-step-back"] };
      const { passed, errors } = await runChecks(
        only,
        async () => {
          const client = await redis.connect();
          return {
            backend: createRedisLockBackend({ client }),
            ttlMs: 1_000,
            allowServerRestarts: false,
            elapse: sleep,
            stepClockBack: async (ms: number) => redis.stepBack(ms),
            teardown: async () => {
              await closeClient(client);
            },
          };
        },
        (h) => h.teardown(),
      );
      // The check's own assertion, in the rule's words.
      if (errors["tokens-clock-step-back"]) throw errors["tokens-clock-step-back"];
      expect(passed).toEqual(["tokens-clock-step-back"]);
    } finally {
      await redis.stop();
    }
  });
});
