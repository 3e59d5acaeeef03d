import { describe, expect, it } from "vitest";
// The reference adapters by path: @outbox/memory depends on @outbox/core, so core takes no dependency on it back.
import { MemoryLockBackend } from "../../memory/src/index.js";
import { DistributedLock, type LockBackend, type LockGrant, ManualClock, OutboxErrorCode } from "../src/index.js";

function counting(backend: LockBackend) {
  const calls = { acquire: 0, renew: 0, release: 0 };
  const wrapped: LockBackend = {
    capabilities: backend.capabilities,
    tryAcquire: (...args) => {
      calls.acquire += 1;
      return backend.tryAcquire(...args);
    },
    renew: (...args) => {
      calls.renew += 1;
      return backend.renew(...args);
    },
    release: (...args) => {
      calls.release += 1;
      return backend.release(...args);
    },
  };
  return { wrapped, calls };
}

const tick = () => new Promise((resolve) => setImmediate(resolve));

describe("DistributedLock", () => {
  it("shares one attempt among concurrent tryAcquire calls: one token, one backend call", async () => {
    const clock = new ManualClock();
    const { wrapped, calls } = counting(new MemoryLockBackend({ clock }));
    const lock = new DistributedLock(wrapped, { name: "n", ttlMs: 3_000, clock });
    const grants = await Promise.all([lock.tryAcquire(), lock.tryAcquire(), lock.tryAcquire()]);
    expect(grants.map((grant) => grant?.token)).toEqual([1n, 1n, 1n]);
    expect(calls.acquire).toBe(1);
    await lock.release();
  });

  it("renews every ttl/3 and keeps the lock past its TTL", async () => {
    const clock = new ManualClock();
    const memory = new MemoryLockBackend({ clock });
    const { wrapped, calls } = counting(memory);
    const lock = new DistributedLock(wrapped, { name: "n", ttlMs: 3_000, clock });
    expect((await lock.tryAcquire())?.token).toBe(1n);
    for (let i = 1; i <= 6; i++) {
      await clock.whenSleeping();
      clock.advance(1_000);
      await tick();
    }
    expect(calls.renew).toBe(6);
    expect(lock.grant?.token).toBe(1n);
    expect(await memory.tryAcquire("n", "other", 3_000)).toBeNull();
    await lock.release();
    expect(calls.release).toBe(1);
    expect(lock.grant).toBeNull();
    expect(await memory.tryAcquire("n", "other", 3_000)).toBe(2n);
  });

  it("reports loss promptly when a renewal is refused", async () => {
    const clock = new ManualClock();
    const memory = new MemoryLockBackend({ clock });
    const lost: LockGrant[] = [];
    const lock = new DistributedLock(memory, { name: "n", ttlMs: 3_000, clock, onLost: (grant) => lost.push(grant) });
    await lock.tryAcquire();
    memory.restart();
    await memory.tryAcquire("n", "thief", 3_000);
    await clock.whenSleeping();
    clock.advance(1_000);
    await tick();
    expect(lost.map((g) => g.token)).toEqual([1n]);
    expect(lock.grant).toBeNull();
  });

  it("stops trusting the grant at acquire + ttl - margin when the backend is unreachable", async () => {
    const clock = new ManualClock();
    const memory = new MemoryLockBackend({ clock });
    const errors: unknown[] = [];
    const lock = new DistributedLock(memory, {
      name: "n",
      ttlMs: 3_000,
      safetyMarginMs: 500,
      clock,
      onError: (e) => errors.push(e),
    });
    await lock.tryAcquire();
    memory.setReachable(false);
    clock.advance(2_499);
    expect(lock.grant).not.toBeNull();
    clock.advance(1);
    expect(lock.grant).toBeNull();
    expect(await lock.tryAcquire()).toBeNull();
    expect(errors.length).toBeGreaterThan(0);
    expect(errors.every((e) => (e as { code?: string }).code === OutboxErrorCode.LockUnavailable)).toBe(true);
  });

  it("reports the loss at the validity deadline even while a renewal hangs", async () => {
    const clock = new ManualClock();
    const memory = new MemoryLockBackend({ clock });
    const hanging: LockBackend = {
      capabilities: memory.capabilities,
      tryAcquire: (...args) => memory.tryAcquire(...args),
      renew: () => new Promise<boolean>(() => {}),
      release: (...args) => memory.release(...args),
    };
    const lost: LockGrant[] = [];
    const lock = new DistributedLock(hanging, {
      name: "n",
      ttlMs: 3_000,
      safetyMarginMs: 600,
      clock,
      onLost: (grant) => lost.push(grant),
    });
    await lock.tryAcquire();
    await clock.whenSleeping();
    clock.advance(1_000); // renewal sent; it never answers
    await tick();
    clock.advance(1_399);
    await tick();
    expect(lost).toHaveLength(0);
    clock.advance(1); // acquire + ttl - margin = 2 400
    await tick();
    expect(lost.map((g) => g.token)).toEqual([1n]);
  });

  it("validates its options", () => {
    const backend = new MemoryLockBackend();
    expect(() => new DistributedLock(backend, { name: "" })).toThrowError(
      expect.objectContaining({ code: OutboxErrorCode.InvalidOptions }) as unknown as Error,
    );
    expect(() => new DistributedLock(backend, { name: "n", ttlMs: 100, safetyMarginMs: 100 })).toThrowError(
      expect.objectContaining({ code: OutboxErrorCode.InvalidOptions }) as unknown as Error,
    );
  });
});
