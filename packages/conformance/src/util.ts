import {
  type LockBackend,
  type OutboxEntry,
  OutboxError,
  type OutboxErrorCode,
  type OutboxStore,
  type SettleContext,
} from "@outbox/core";
import { expect } from "vitest";

/** Seeded PRNG (mulberry32): kit runs are reproducible. */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A unique name per test, so suites never see each other's data. */
export function uniqueName(prefix: string): string {
  return `${prefix}-${globalThis.crypto.randomUUID().slice(0, 8)}`;
}

export const text = (value: string): Uint8Array => new TextEncoder().encode(value);

export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.byteLength !== b.byteLength) return false;
  for (let i = 0; i < a.byteLength; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Payloads that break naive stores: NUL bytes, invalid UTF-8, astral characters, 1 MiB. */
export function awkwardPayloads(
  largeBytes: number,
): Array<{ name: string; payload: Uint8Array | string; bytes: Uint8Array }> {
  const binary = new Uint8Array([0, 1, 2, 0, 255, 254, 0, 128]);
  const notUtf8 = new Uint8Array([0xc3, 0x28, 0xa0, 0xa1, 0xe2, 0x28, 0xa1, 0xf0, 0x28, 0x8c, 0xbc]);
  const unicode = "naïve café — 日本語 — 🚀🧪 — \u0000 nul inside";
  const large = new Uint8Array(largeBytes);
  for (let i = 0; i < large.byteLength; i++) large[i] = (i * 31 + 7) % 256;
  return [
    { name: "binary with zero bytes", payload: binary, bytes: binary },
    { name: "non-UTF-8 bytes", payload: notUtf8, bytes: notUtf8 },
    { name: "unicode string", payload: unicode, bytes: text(unicode) },
    { name: "empty", payload: new Uint8Array(0), bytes: new Uint8Array(0) },
    { name: `${largeBytes} bytes`, payload: large, bytes: large },
  ];
}

/** Claims everything claimable and acks it; returns the entries in claim order. */
export async function claimAndAckAll(
  store: OutboxStore<never>,
  context: SettleContext,
  leaseMs = 60_000,
): Promise<OutboxEntry[]> {
  const all: OutboxEntry[] = [];
  for (;;) {
    const batch = await store.claim({ claimer: context.claimer, limit: 100, leaseMs, fence: context.fence });
    if (batch.length === 0) return all;
    await store.ack(
      batch.map((entry) => entry.id),
      context,
    );
    all.push(...batch);
  }
}

/** Asserts that for every key the sequence numbers appear in ascending order. */
export function keyOrderViolations(items: ReadonlyArray<{ key: string | null; seq: number }>): string[] {
  const last = new Map<string, number>();
  const violations: string[] = [];
  for (const { key, seq } of items) {
    if (key === null) continue;
    const previous = last.get(key);
    if (previous !== undefined && seq < previous) violations.push(`${key}: ${seq} after ${previous}`);
    last.set(key, Math.max(previous ?? seq, seq));
  }
  return violations;
}

/** A promise with its resolver, for "wait until the other side got here" hand-offs in checks. */
export function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((done) => {
    resolve = done;
  });
  return { promise, resolve };
}

/**
 * The store's own methods, bound, with some replaced: for fault-injecting or recording wrappers
 * (works with stores that keep their state in private fields).
 */
export function wrapStore<Tx>(inner: OutboxStore<Tx>, overrides: Partial<OutboxStore<Tx>>): OutboxStore<Tx> {
  const subscribe = inner.subscribe?.bind(inner);
  const dropDead = inner.dropDead?.bind(inner);
  const releaseClaimer = inner.releaseClaimer?.bind(inner);
  const pendingSummary = inner.pendingSummary?.bind(inner);
  const relayActivity = inner.relayActivity?.bind(inner);
  return {
    capabilities: inner.capabilities,
    enqueue: (tx, messages) => inner.enqueue(tx, messages),
    claim: (request) => inner.claim(request),
    ack: (ids, context) => inner.ack(ids, context),
    retry: (items, context) => inner.retry(items, context),
    deadLetter: (items, context) => inner.deadLetter(items, context),
    release: (ids, context) => inner.release(ids, context),
    listDead: (options) => inner.listDead(options),
    requeueDead: (ids) => inner.requeueDead(ids),
    purge: (request) => inner.purge(request),
    stats: () => inner.stats(),
    ...(subscribe ? { subscribe } : {}),
    ...(dropDead ? { dropDead } : {}),
    ...(releaseClaimer ? { releaseClaimer } : {}),
    ...(pendingSummary ? { pendingSummary } : {}),
    ...(relayActivity ? { relayActivity } : {}),
    close: () => inner.close(),
    ...overrides,
  };
}

/** The same for a lock backend: its own methods, bound, with some replaced. */
export function wrapLockBackend(inner: LockBackend, overrides: Partial<LockBackend>): LockBackend {
  const close = inner.close?.bind(inner);
  return {
    capabilities: inner.capabilities,
    tryAcquire: (name, holder, ttlMs) => inner.tryAcquire(name, holder, ttlMs),
    renew: (name, holder, ttlMs) => inner.renew(name, holder, ttlMs),
    release: (name, holder) => inner.release(name, holder),
    ...(close ? { close } : {}),
    ...overrides,
  };
}

/** Asserts that `promise` rejects with an OutboxError of `code`; `rule` says why, in the author's words. */
export async function expectCode(promise: Promise<unknown>, code: OutboxErrorCode, rule: string): Promise<void> {
  const error = await promise.then(
    () => null,
    (caught: unknown) => caught,
  );
  expect(error, `${rule} (expected an OutboxError ${code}, but the call succeeded)`).not.toBeNull();
  expect(OutboxError.is(error) ? error.code : error, `${rule} (expected an OutboxError ${code})`).toBe(code);
}
