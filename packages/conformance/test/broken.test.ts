import {
  type LockBackend,
  ManualClock,
  MemoryLockBackend,
  MemoryPublisher,
  MemoryStore,
  type MemoryTransaction,
  OutboxError,
  OutboxErrorCode,
  type OutboxRelayOptions,
  type OutboxStore,
  permanentFailure,
} from "@outbox/core";
import { describe, expect, it } from "vitest";
import {
  type LockHarness,
  lockChecks,
  memoryStoreHarness,
  type PublisherHarness,
  publisherChecks,
  type RelayUnderTest,
  relayCheckContext,
  relayChecks,
  runChecks,
  type StoreHarness,
  storeChecks,
  uniqueName,
  wrapStore,
} from "../src/index.js";

// The kit must be able to fail: each deliberately broken adapter below has to fail at
// least the named check. A kit that passes these would pass anything.

type Tx = MemoryTransaction;

/** A store built on the reference one with one rule broken by `patch`. */
function brokenStore(patch: (inner: MemoryStore) => Partial<OutboxStore<Tx>>) {
  return async (clock: ManualClock): Promise<StoreHarness<Tx>> => {
    const inner = new MemoryStore({ clock });
    const base = wrapStore(inner, {});
    return {
      store: { ...base, ...patch(inner) },
      clock,
      transaction: (work) => inner.transaction(work),
      teardown: () => inner.close(),
    };
  };
}

async function failingStoreChecks(create: (clock: ManualClock) => Promise<StoreHarness<Tx>>) {
  const { failed } = await runChecks(
    storeChecks,
    () => create(new ManualClock()) as Promise<StoreHarness<unknown>>,
    (h) => h.teardown(),
  );
  return failed;
}

async function failingRelayChecks(
  createStore: (clock: ManualClock) => Promise<StoreHarness<Tx>>,
  createRelay?: (options: OutboxRelayOptions) => RelayUnderTest,
) {
  const { create, dispose } = relayCheckContext({ createStore, createRelay });
  const { failed } = await runChecks(relayChecks, create, dispose);
  return failed;
}

describe("the kit catches broken stores", () => {
  it("a store without leases fails claim exclusivity", async () => {
    const noLease = brokenStore((inner) => ({
      claim: async (request) => {
        const entries = await inner.claim(request);
        await inner.release(
          entries.map((e) => e.id),
          { claimer: request.claimer },
        );
        return entries;
      },
    }));
    expect(await failingStoreChecks(noLease)).toEqual(expect.arrayContaining(["claim-exclusive", "lease-expiry"]));
  });

  it("a store that ignores fencing tokens fails the fencing checks", async () => {
    const noFence = brokenStore((inner) => ({
      claim: (request) => inner.claim({ ...request, fence: undefined }),
      ack: (ids, context) => inner.ack(ids, { claimer: context.claimer }),
      retry: (items, context) => inner.retry(items, { claimer: context.claimer }),
    }));
    expect(await failingStoreChecks(noFence)).toContain("fencing");
    expect(await failingRelayChecks(noFence)).toContain("deposed-leader-cannot-ack");
  });

  it("a store that loses per-key order fails the key-order checks", async () => {
    // Claims as if every entry had no key.
    const unordered = brokenStore((inner) => {
      const claimed = new Set<string>();
      return {
        claim: async (request) => {
          const all = [];
          for (;;) {
            const batch = await inner.claim({ ...request, limit: 1000 });
            if (batch.length === 0) break;
            all.push(...batch);
            await inner.ack(
              batch.map((e) => e.id),
              { claimer: request.claimer },
            );
          }
          const fresh = all.filter((e) => !claimed.has(e.id)).slice(0, request.limit);
          for (const e of fresh) claimed.add(e.id);
          return fresh;
        },
      };
    });
    expect(await failingStoreChecks(unordered)).toContain("key-order");
  });

  it("a store without lease takeover fails the takeover checks", async () => {
    // Respects every lease until it expires, whatever the fence says.
    const noTakeover = brokenStore((inner) => ({
      claim: async (request) => {
        const stats = await inner.stats();
        if (request.fence && stats.inFlight > 0) {
          await inner.claim({ ...request, limit: 0 });
          return [];
        }
        return inner.claim(request);
      },
    }));
    expect(await failingStoreChecks(noTakeover)).toContain("takeover");
    expect(await failingRelayChecks(noTakeover)).toContain("deposed-leader-cannot-ack");
  });

  it("a store that hands a key's successors out without its head fails the run checks", async () => {
    const headless = brokenStore((inner) => ({
      claim: async (request) => {
        const entries = await inner.claim(request);
        const heads = entries.filter((e, i) => e.key !== null && entries.findIndex((o) => o.key === e.key) === i);
        const withSuccessors = heads.filter((head) => entries.some((e) => e.key === head.key && e !== head));
        await inner.release(
          withSuccessors.map((e) => e.id),
          { claimer: request.claimer, fence: request.fence },
        );
        return entries.filter((e) => !withSuccessors.includes(e));
      },
    }));
    expect(await failingStoreChecks(headless)).toEqual(expect.arrayContaining(["key-order", "key-runs"]));
  });

  it("a store that reports a stale newest token fails fenced-details", async () => {
    const stale = brokenStore((inner) => {
      const rewrite = async <T>(call: () => Promise<T>): Promise<T> => {
        try {
          return await call();
        } catch (error) {
          if (OutboxError.is(error, OutboxErrorCode.Fenced)) {
            throw new OutboxError(OutboxErrorCode.Fenced, "stale", {
              details: { ...error.details, newest: error.details.token },
            });
          }
          throw error;
        }
      };
      return {
        claim: (request) => rewrite(() => inner.claim(request)),
        ack: (ids, context) => rewrite(() => inner.ack(ids, context)),
      };
    });
    expect(await failingStoreChecks(stale)).toContain("fenced-details");
  });

  it("a store that acks non-idempotently or purges pending entries fails", async () => {
    const eager = brokenStore((inner) => ({
      purge: async (request) => {
        const stats = await inner.stats();
        return (await inner.purge(request)) + stats.pending;
      },
    }));
    expect(await failingStoreChecks(eager)).toContain("purge");
  });
});

describe("the kit catches broken relays", () => {
  it("a relay that acks before publishing loses entries when killed", async () => {
    const ackFirst = (options: OutboxRelayOptions): RelayUnderTest => ({
      async runOnce() {
        const claimer = uniqueName("ack-first");
        const entries = await options.store.claim({ claimer, limit: options.batchSize ?? 32, leaseMs: 30_000 });
        await options.store.ack(
          entries.map((e) => e.id),
          { claimer },
        );
        await options.publisher.publish(entries);
        return entries.length;
      },
    });
    expect(await failingRelayChecks(memoryStoreHarness, ackFirst)).toContain("crash-during-publish");
  });
});

describe("the kit catches broken publishers and locks", () => {
  it("a publisher that mangles bytes through a UTF-8 round trip fails round-trip", async () => {
    const { failed } = await runChecks(
      publisherChecks,
      async () => {
        const inner = new MemoryPublisher();
        const harness: PublisherHarness & { largePayloadBytes: number } = {
          largePayloadBytes: 1024,
          publisher: {
            publish: (entries) =>
              inner.publish(
                entries.map((e) => ({
                  ...e,
                  payload: new TextEncoder().encode(new TextDecoder().decode(e.payload)),
                })),
              ),
          },
          topic: async () => uniqueName("t"),
          receive: async (topic) => inner.topic(topic),
          teardown: async () => {},
        };
        return harness;
      },
      (h) => h.teardown(),
    );
    expect(failed).toContain("round-trip");
  });

  it("a publisher that keeps sending a key's run after a failure fails key-runs", async () => {
    const { failed } = await runChecks(
      publisherChecks,
      async () => {
        const inner = new MemoryPublisher();
        const oversize = 1_000;
        const harness: PublisherHarness & { largePayloadBytes: number } = {
          largePayloadBytes: 100,
          publisher: {
            // Judges every entry on its own, ignoring its key's earlier failure in the call.
            async publish(entries) {
              const outcomes = [];
              for (const entry of entries) {
                if (entry.payload.byteLength > oversize) outcomes.push(permanentFailure(new Error("too large")));
                else outcomes.push(...(await inner.publish([entry])));
              }
              return outcomes;
            },
          },
          topic: async () => uniqueName("t"),
          receive: async (topic) => inner.topic(topic),
          permanentFailure: async (topic) => ({ topic, key: null, payload: new Uint8Array(oversize + 1) }),
          teardown: async () => {},
        };
        return harness;
      },
      (h) => h.teardown(),
    );
    expect(failed).toContain("key-runs");
  });

  it("a lock that lets anyone release, or reuses tokens, fails", async () => {
    const clock = new ManualClock();
    const sloppy = (): LockBackend => {
      const inner = new MemoryLockBackend({ clock });
      return {
        capabilities: inner.capabilities,
        tryAcquire: async (name, holder, ttl) => ((await inner.tryAcquire(name, holder, ttl)) === null ? null : 1n),
        renew: (name, holder, ttl) => inner.renew(name, holder, ttl),
        release: async (name) => {
          inner.restart();
          return name.length > 0;
        },
      };
    };
    const { failed } = await runChecks(
      lockChecks,
      async (): Promise<LockHarness & { ttlMs: number }> => ({
        backend: sloppy(),
        ttlMs: 1_000,
        elapse: async (ms) => clock.advance(ms),
        teardown: async () => {},
      }),
      (h) => h.teardown(),
    );
    expect(failed).toEqual(expect.arrayContaining(["holder-only", "fencing-tokens"]));
  });
});
