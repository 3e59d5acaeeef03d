import {
  type Clock,
  claimersByRelay,
  type Fence,
  ManualClock,
  type OutboxStore,
  type RelayActivity,
  type RelayActivityOptions,
} from "@outbox/core";
import { MemoryStore, type MemoryTransaction } from "@outbox/memory";
import { describe, expect, it } from "vitest";
import { memoryStoreHarness, runChecks, type StoreHarness, storeChecks, wrapStore } from "../src/index.js";

// Stores whose relayActivity() breaks one of its rules each: each must fail relay-activity with a
// message that names the rule.

type Tx = MemoryTransaction;
type Report = (options?: RelayActivityOptions) => Promise<RelayActivity>;

/**
 * The reference store with methods replaced by `patch`: `report` is its own relayActivity, `atDawn`
 * runs `work` with the store's clock reading 0.
 */
function brokenStore(
  patch: (
    report: Report,
    atDawn: <T>(work: () => Promise<T>) => Promise<T>,
    inner: MemoryStore,
  ) => Partial<OutboxStore<Tx>>,
) {
  return async (clock: ManualClock): Promise<StoreHarness<Tx>> => {
    let dawn = false;
    const storeClock: Clock = { now: () => (dawn ? 0 : clock.now()), sleep: (ms, signal) => clock.sleep(ms, signal) };
    const inner = new MemoryStore({ clock: storeClock });
    const atDawn = async <T>(work: () => Promise<T>): Promise<T> => {
      dawn = true;
      try {
        return await work();
      } finally {
        dawn = false;
      }
    };
    const store = wrapStore(inner, {});
    return {
      store: { ...store, ...patch((options) => inner.relayActivity(options), atDawn, inner) },
      clock,
      transaction: (work) => inner.transaction(work),
      teardown: () => inner.close(),
    };
  };
}

async function runActivityCheck(create: (clock: ManualClock) => Promise<StoreHarness<Tx>>) {
  const { passed, errors } = await runChecks(
    { "relay-activity": storeChecks["relay-activity"] },
    () => create(new ManualClock()) as Promise<StoreHarness<unknown>>,
    (h) => h.teardown(),
    { timeoutMs: 20_000 },
  );
  return {
    passed: passed.includes("relay-activity"),
    message: String((errors["relay-activity"] as Error | undefined)?.message ?? ""),
  };
}

async function expectFailure(create: (clock: ManualClock) => Promise<StoreHarness<Tx>>, rule: string) {
  const result = await runActivityCheck(create);
  expect(result.passed, "relay-activity must fail").toBe(false);
  expect(result.message).toContain(rule);
}

describe("the kit catches broken relayActivity()", () => {
  it("the reference store passes relay-activity", async () => {
    expect(await runActivityCheck(memoryStoreHarness)).toEqual({ passed: true, message: "" });
  });

  it("a store without relayActivity skips it", async () => {
    const without = brokenStore(() => ({}));
    const { skipped } = await runChecks(
      { "relay-activity": storeChecks["relay-activity"] },
      async () => {
        const h = await without(new ManualClock());
        return { ...h, store: { ...h.store, relayActivity: undefined } } as StoreHarness<unknown>;
      },
      (h) => h.teardown(),
    );
    expect(skipped).toEqual(["relay-activity"]);
  });

  it("a store that counts expired leases fails it", async () => {
    // Every lease ever taken (lease_until set), as if asked before any of them ended.
    const expired = brokenStore((report, atDawn) => ({ relayActivity: (options) => atDawn(() => report(options)) }));
    await expectFailure(expired, "expired leases");
  });

  it("a store that groups claimers by their first '#' fails it", async () => {
    const firstHash = brokenStore((report) => ({
      async relayActivity(options) {
        const activity = await report(options);
        const claimers = claimersByRelay(
          activity.claimers.map((claimer) => ({ ...claimer, claimer: `${claimer.relay.split("#")[0]}#1` })),
        );
        return { ...activity, claimers };
      },
    }));
    await expectFailure(firstHash, "up to their last '#'");
  });

  it("a store that reports the first token of a lock, not the newest, fails it", async () => {
    const firstToken = brokenStore((report, _atDawn, inner) => {
      const first = new Map<string, bigint>();
      const note = (fence: Fence | undefined) => {
        if (fence && !first.has(fence.lock)) first.set(fence.lock, fence.token);
      };
      return {
        claim: (request) => {
          note(request.fence);
          return inner.claim(request);
        },
        async relayActivity(options) {
          const fences = [...first]
            .map(([lock, token]) => ({ lock, token }))
            .sort((a, b) => (a.lock < b.lock ? -1 : 1));
          return { ...(await report(options)), fences };
        },
      };
    });
    await expectFailure(firstToken, "the newest token");
  });

  it("a store that lists errors oldest first fails it", async () => {
    const oldestFirst = brokenStore((report) => ({
      async relayActivity(options) {
        const activity = await report(options);
        const recentErrors = [...activity.recentErrors].sort((a, b) => a.at.getTime() - b.at.getTime());
        return { ...activity, recentErrors };
      },
    }));
    await expectFailure(oldestFirst, "newest `at` first");
  });

  it("a store that lists errors by entry id, newest entry first, fails it", async () => {
    const byId = brokenStore((report) => ({
      async relayActivity(options) {
        const activity = await report(options);
        const recentErrors = [...activity.recentErrors].sort((a, b) => Number(b.id) - Number(a.id));
        return { ...activity, recentErrors };
      },
    }));
    await expectFailure(byId, "newest `at` first");
  });

  it("a store that ignores scanLimit fails it", async () => {
    const unbounded = brokenStore((report) => ({
      relayActivity: (options) => report({ recentErrors: options?.recentErrors }),
    }));
    await expectFailure(unbounded, "with scanLimit 2");
  });
});
