import { uniqueName } from "@outbox/conformance";
import { DistributedLock, OutboxError, OutboxErrorCode } from "@outbox/core";
import { closeClients, newClient, RedisProxy } from "@outbox/test-support/redis";
import type { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createRedisLockBackend } from "../src/index.js";

let client: Redis;
let admin: Redis;

beforeAll(async () => {
  client = await newClient();
  admin = await newClient();
});
afterAll(closeClients);

async function code(promise: Promise<unknown>): Promise<string | null> {
  const error = await promise.then(
    () => null,
    (caught: unknown) => caught,
  );
  return OutboxError.is(error) ? error.code : `not an OutboxError: ${String(error)}`;
}

describe("createRedisLockBackend", () => {
  it("stores <token>:<holder> under a hash-tagged key with the TTL", async () => {
    const backend = createRedisLockBackend({ client });
    const name = uniqueName("lock");
    const token = await backend.tryAcquire(name, "holder-a", 5_000);
    expect(backend.lockKey(name)).toBe(`outbox:lock:{${name}}`);
    expect(backend.fenceKey(name)).toBe(`outbox:lock:{${name}}:fence`);
    expect(await admin.get(backend.lockKey(name))).toBe(`${token}:holder-a`);
    expect(await admin.get(backend.fenceKey(name))).toBe(String(token));
    const pttl = await admin.pttl(backend.lockKey(name));
    expect(pttl).toBeGreaterThan(4_000);
    expect(pttl).toBeLessThanOrEqual(5_000);
  });

  it("honours keyPrefix", async () => {
    const backend = createRedisLockBackend({ client, keyPrefix: "custom:" });
    const name = uniqueName("lock");
    await backend.tryAcquire(name, "h", 5_000);
    expect(await admin.exists(`custom:{${name}}`, `custom:{${name}}:fence`)).toBe(2);
  });

  it("keeps tokens exact beyond 2^53 (no double rounding)", async () => {
    const backend = createRedisLockBackend({ client });
    const name = uniqueName("lock");
    await admin.set(backend.fenceKey(name), "9007199254740993000"); // far above 2^53 and the time floor
    expect(await backend.tryAcquire(name, "a", 5_000)).toBe(9007199254740993001n);
    await backend.release(name, "a");
    expect(await backend.tryAcquire(name, "b", 5_000)).toBe(9007199254740993002n);
  });

  it("tokens stay above earlier ones when the counter is lost (the server-time floor)", async () => {
    const backend = createRedisLockBackend({ client });
    const name = uniqueName("lock");
    const first = (await backend.tryAcquire(name, "a", 5_000)) as bigint;
    // A restart without persistence or a failover to a lagging replica loses both keys.
    await admin.del(backend.lockKey(name), backend.fenceKey(name));
    const second = (await backend.tryAcquire(name, "b", 5_000)) as bigint;
    expect(second > first).toBe(true);
    // The floor is the Redis server's clock in microseconds.
    const [seconds, micros] = (await admin.time()) as [number | string, number | string];
    const serverMicros = BigInt(seconds) * 1_000_000n + BigInt(micros);
    expect(second <= serverMicros).toBe(true);
    expect(serverMicros - second < 60_000_000n).toBe(true);
  });

  it("re-acquiring by the same holder extends the lock and returns a fresh, higher token", async () => {
    const backend = createRedisLockBackend({ client });
    const name = uniqueName("lock");
    const first = (await backend.tryAcquire(name, "a", 1_000)) as bigint;
    const again = (await backend.tryAcquire(name, "a", 5_000)) as bigint;
    expect(again > first).toBe(true);
    expect(await admin.pttl(backend.lockKey(name))).toBeGreaterThan(4_000);
    expect(await backend.tryAcquire(name, "b", 5_000)).toBeNull();
  });

  it("a late release of an older grant does not delete the same holder's newer grant", async () => {
    const name = uniqueName("lock");
    const first = createRedisLockBackend({ client });
    const second = createRedisLockBackend({ client });
    await first.tryAcquire(name, "relay-1", 5_000);
    // The holder took its lock back (say the first reply was lost) through another instance.
    await second.tryAcquire(name, "relay-1", 5_000);
    expect(await first.release(name, "relay-1")).toBe(false);
    expect(await admin.exists(first.lockKey(name))).toBe(1);
    expect(await second.release(name, "relay-1")).toBe(true);
    expect(await admin.exists(first.lockKey(name))).toBe(0);
  });

  it("never takes over a key it did not write", async () => {
    const backend = createRedisLockBackend({ client });
    const name = uniqueName("lock");
    await admin.set(backend.lockKey(name), "something else", "PX", 5_000);
    expect(await backend.tryAcquire(name, "a", 5_000)).toBeNull();
    expect(await backend.renew(name, "else", 5_000)).toBe(false);
    expect(await backend.release(name, "else")).toBe(false);
    expect(await admin.get(backend.lockKey(name))).toBe("something else");
  });

  it("holders containing ':' work", async () => {
    const backend = createRedisLockBackend({ client });
    const name = uniqueName("lock");
    expect(await backend.tryAcquire(name, "host:pid:1", 5_000)).not.toBeNull();
    expect(await backend.tryAcquire(name, "pid:1", 5_000)).toBeNull();
    expect(await backend.renew(name, "host:pid:1", 5_000)).toBe(true);
    expect(await backend.release(name, "host:pid:1")).toBe(true);
  });

  it("reloads its scripts after the server's script cache was flushed", async () => {
    const backend = createRedisLockBackend({ client });
    const name = uniqueName("lock");
    await admin.script("FLUSH");
    expect(await backend.tryAcquire(name, "a", 5_000)).not.toBeNull();
    await admin.script("FLUSH");
    expect(await backend.renew(name, "a", 5_000)).toBe(true);
    await admin.script("FLUSH");
    expect(await backend.release(name, "a")).toBe(true);
  });

  it("rounds a fractional TTL up to whole milliseconds", async () => {
    const backend = createRedisLockBackend({ client });
    const name = uniqueName("lock");
    expect(await backend.tryAcquire(name, "a", 1_500.2)).not.toBeNull();
    expect(await admin.pttl(backend.lockKey(name))).toBeGreaterThan(1_400);
  });

  it("Redis errors surface as OUTBOX_LOCK_UNAVAILABLE; DistributedLock treats them as not held", async () => {
    const backend = createRedisLockBackend({ client });
    const name = uniqueName("lock");
    await admin.rpush(backend.fenceKey(name), "not a counter");
    expect(await code(backend.tryAcquire(name, "a", 5_000))).toBe(OutboxErrorCode.LockUnavailable);
    const errors: unknown[] = [];
    const lock = new DistributedLock(backend, { name, ttlMs: 5_000, onError: (error) => errors.push(error) });
    expect(await lock.tryAcquire()).toBeNull();
    expect(errors).toHaveLength(1);
    expect(OutboxError.is(errors[0], OutboxErrorCode.LockUnavailable)).toBe(true);
  });

  it("rejects bad options and arguments with OUTBOX_INVALID_OPTIONS", async () => {
    const backend = createRedisLockBackend({ client });
    expect(() => createRedisLockBackend({} as never)).toThrow(
      expect.objectContaining({ code: "OUTBOX_INVALID_OPTIONS" }),
    );
    expect(() => createRedisLockBackend({ client, timeoutMs: 0 })).toThrow(
      expect.objectContaining({ code: "OUTBOX_INVALID_OPTIONS" }),
    );
    expect(await code(backend.tryAcquire("", "a", 1_000))).toBe(OutboxErrorCode.InvalidOptions);
    expect(await code(backend.tryAcquire("n", "", 1_000))).toBe(OutboxErrorCode.InvalidOptions);
    expect(await code(backend.tryAcquire("n", "a", 0))).toBe(OutboxErrorCode.InvalidOptions);
    expect(await code(backend.renew("n", "a", Number.NaN))).toBe(OutboxErrorCode.InvalidOptions);
  });

  it("after close, calls fail with OUTBOX_CLOSED and the caller's client stays open", async () => {
    const backend = createRedisLockBackend({ client });
    await backend.close();
    expect(await code(backend.tryAcquire(uniqueName("lock"), "a", 1_000))).toBe(OutboxErrorCode.Closed);
    expect(await code(backend.release(uniqueName("lock"), "a"))).toBe(OutboxErrorCode.Closed);
    expect(await client.ping()).toBe("PONG");
  });

  it("a call that Redis never answers fails after timeoutMs instead of hanging", async () => {
    const proxy = await RedisProxy.start();
    try {
      // No ioredis commandTimeout here: the backend's own timeout must do it.
      const cutOff = await newClient({ enableOfflineQueue: true, maxRetriesPerRequest: null }, proxy.url);
      const backend = createRedisLockBackend({ client: cutOff, timeoutMs: 300 });
      const name = uniqueName("lock");
      expect(await backend.tryAcquire(name, "a", 5_000)).not.toBeNull();
      proxy.cut("blackhole");
      const started = Date.now();
      expect(await code(backend.renew(name, "a", 5_000))).toBe(OutboxErrorCode.LockUnavailable);
      expect(Date.now() - started).toBeLessThan(2_000);
      expect(await code(backend.tryAcquire(name, "a", 5_000))).toBe(OutboxErrorCode.LockUnavailable);
      cutOff.disconnect();
    } finally {
      await proxy.close();
    }
  });
});
