// What the broken-*.test.ts files share: the ways they run a few checks against a bent reference
// adapter. Test-only: not in the package's `files`.
import { type LockBackend, ManualClock, OutboxRelay, type OutboxRelayOptions } from "@outbox/core";
import { MemoryLockBackend, type MemoryTransaction } from "@outbox/memory";
import { expect } from "vitest";
import {
  type LockHarness,
  lockChecks,
  memoryStoreHarness,
  type RelayUnderTest,
  relayCheckContext,
  relayChecks,
  runChecks,
  type StoreHarness,
  storeChecks,
  wrapLockBackend,
  wrapStore,
} from "../src/index.js";

/** The real relay with its options (or its store) bent by `bend`: one rule of the relay broken. */
export function bentRelay(bend: (options: OutboxRelayOptions) => OutboxRelayOptions) {
  return (options: OutboxRelayOptions): RelayUnderTest => {
    const relay = new OutboxRelay(bend(options));
    relay.on("error", () => {});
    return relay;
  };
}

/**
 * The real relay, except that its publish is aborted by a timer only, on the relay's clock:
 * `abortAfter(leaseMs)` ms into the call, with `reason`.
 */
export function timerAbortedRelay(abortAfter: (leaseMs: number) => number, reason?: unknown) {
  return bentRelay((options) => {
    const clock = options.clock as ManualClock;
    const leaseMs = options.leaseMs ?? 30_000;
    const publisher = options.publisher;
    return {
      ...options,
      publisher: {
        async publish(entries) {
          const timer = new AbortController();
          const done = new AbortController();
          void clock.sleep(abortAfter(leaseMs), done.signal).then(() => timer.abort(reason));
          try {
            return await publisher.publish(entries, { signal: timer.signal });
          } finally {
            done.abort();
          }
        },
      },
    };
  });
}

/**
 * The real relay, except that what it gives back goes to its store's retry() instead of release():
 * an attempt counted, with `error`, due `delayMs` later.
 */
export function releaseRetriedRelay(error: string, delayMs: number) {
  return bentRelay((options) => {
    const store = options.store;
    const clock = options.clock as ManualClock;
    return {
      ...options,
      store: wrapStore(store, {
        release: (ids, context) =>
          store.retry(
            ids.map((id) => ({ id, error, availableAt: new Date(clock.now() + delayMs) })),
            context,
          ),
      }),
    };
  });
}

/** Runs only the relay checks `rules`: against the real relay, or against the one `createRelay` makes. */
export function relayRuleRunner<Id extends keyof typeof relayChecks>(rules: readonly Id[]) {
  return async (createRelay?: (options: OutboxRelayOptions) => RelayUnderTest) => {
    const { create, dispose } = relayCheckContext({ createStore: memoryStoreHarness, createRelay });
    const only = Object.fromEntries(rules.map((id) => [id, relayChecks[id]])) as Pick<typeof relayChecks, Id>;
    return runChecks(only, create, dispose, { timeoutMs: 20_000 });
  };
}

/** The real relay passes every check of `rules`, and none of them errs. */
export async function expectRelayPasses(rules: readonly (keyof typeof relayChecks)[]): Promise<void> {
  const { passed, errors } = await relayRuleRunner(rules)();
  expect(errors).toEqual({});
  expect(passed).toEqual([...rules]);
}

export type LockContextExtras = { ttlMs: number; allowServerRestarts: boolean };

/** A harness over the in-memory lock `inner` on `clock`, whose restarts stand for the server's. */
export function memoryLockHarness(
  inner: MemoryLockBackend,
  clock: ManualClock,
  backend: LockBackend,
  ttlMs = 1_000,
): LockHarness & LockContextExtras {
  return {
    backend,
    ttlMs,
    allowServerRestarts: true,
    elapse: async (ms) => clock.advance(ms),
    restart: async () => inner.restart(),
    expire: async () => inner.restart(),
    dropHolding: async () => inner.restart(),
    stepClockBack: async (ms) => clock.advance(-ms),
    teardown: () => inner.close(),
  };
}

/** Methods replacing the in-memory lock's: one way a lock backend goes wrong. */
export type LockPatch = (inner: MemoryLockBackend, clock: ManualClock) => Partial<LockBackend>;

/** Every lock check against the in-memory lock with some methods replaced by `patch`, on a manual clock. */
export async function lockResults(patch: LockPatch, ttlMs = 1_000) {
  const clock = new ManualClock();
  return runChecks(
    lockChecks,
    async () => {
      const inner = new MemoryLockBackend({ clock });
      return memoryLockHarness(inner, clock, wrapLockBackend(inner, patch(inner, clock)), ttlMs);
    },
    (h) => h.teardown(),
  );
}

/** One store check against the harness `create` makes: whether it passed, and its failure's message. */
export async function runStoreCheck(
  create: (clock: ManualClock) => Promise<StoreHarness<MemoryTransaction>>,
  id: keyof typeof storeChecks,
): Promise<{ passed: boolean; message: string }> {
  const { passed, errors } = await runChecks(
    { [id]: storeChecks[id] } as Pick<typeof storeChecks, typeof id>,
    () => create(new ManualClock()) as Promise<StoreHarness<unknown>>,
    (h) => h.teardown(),
    { timeoutMs: 20_000 },
  );
  return { passed: passed.includes(id), message: String((errors[id] as Error | undefined)?.message ?? "") };
}
