import {
  type ManualClock,
  OutboxError,
  OutboxErrorCode,
  OutboxRelay,
  type OutboxRelayOptions,
  type OutboxStore,
} from "@outbox/core";
import { describe, expect, it } from "vitest";
import {
  memoryStoreHarness,
  type RelayUnderTest,
  relayCheckContext,
  relayChecks,
  runChecks,
  wrapStore,
} from "../src/index.js";

// The relay-loop checks must be able to fail: each bent relay below breaks one rule of the loop
// (through its options: the store, publisher, retry policy or lock it is given) and has to fail
// the check for that rule.

/** The real relay with its options bent by `bend`. */
function bentRelay(bend: (options: OutboxRelayOptions) => OutboxRelayOptions) {
  return (options: OutboxRelayOptions): RelayUnderTest => {
    const relay = new OutboxRelay(bend(options));
    relay.on("error", () => {});
    return relay;
  };
}

const loopRules = [
  "last-attempt-dead-letters",
  "claim-reply-lost",
  "deposed-before-publish",
  "deposed-before-ack",
  "settle-retry-within-lease",
  "stop-aborts-publish",
  "stop-gives-back",
] as const;

async function loopRuleResults(createRelay?: (options: OutboxRelayOptions) => RelayUnderTest) {
  const { create, dispose } = relayCheckContext({ createStore: memoryStoreHarness, createRelay });
  const only = Object.fromEntries(loopRules.map((id) => [id, relayChecks[id]])) as Pick<
    typeof relayChecks,
    (typeof loopRules)[number]
  >;
  return runChecks(only, create, dispose, { timeoutMs: 20_000 });
}

describe("the kit catches broken relay loops", () => {
  it("OutboxRelay passes the relay loop's rules", async () => {
    const { passed, errors } = await loopRuleResults();
    expect(errors).toEqual({});
    expect(passed).toEqual([...loopRules]);
  });

  it("a relay that allows one publish more than maxAttempts fails last-attempt-dead-letters", async () => {
    const lenient = bentRelay((options) => ({
      ...options,
      retry: { ...options.retry, maxAttempts: (options.retry?.maxAttempts ?? 10) + 1 },
    }));
    expect((await loopRuleResults(lenient)).failed).toEqual(["last-attempt-dead-letters"]);
  });

  it("a relay whose store has no releaseClaimer() fails claim-reply-lost", async () => {
    const forgetful = bentRelay((options) => {
      const { releaseClaimer: _dropped, ...store } = wrapStore(options.store, {});
      return { ...options, store };
    });
    expect((await loopRuleResults(forgetful)).failed).toEqual(["claim-reply-lost"]);
  });

  it("a relay that ignores its leader lock fails deposed-before-publish and deposed-before-ack", async () => {
    const leaderless = bentRelay(({ leader: _ignored, ...options }) => options);
    expect((await loopRuleResults(leaderless)).failed).toEqual(["deposed-before-publish", "deposed-before-ack"]);
  });

  it("a relay that retries an unanswered ack past the lease fails settle-retry-within-lease", async () => {
    const stubborn = bentRelay((options) => {
      const store = options.store;
      const clock = options.clock as ManualClock;
      return {
        ...options,
        store: wrapStore(store, {
          ack: async (ids, context) => {
            for (;;) {
              try {
                return await store.ack(ids, context);
              } catch (error) {
                if (!OutboxError.is(error, OutboxErrorCode.StoreUnavailable)) throw error;
                await clock.sleep(1_000);
              }
            }
          },
        }),
      };
    });
    expect((await loopRuleResults(stubborn)).failed).toEqual(["settle-retry-within-lease"]);
  });

  it("a relay whose publish is aborted only by the lease fails stop-aborts-publish", async () => {
    const leaseOnly = bentRelay((options) => {
      const clock = options.clock as ManualClock;
      const leaseMs = options.leaseMs ?? 30_000;
      const publisher = options.publisher;
      return {
        ...options,
        publisher: {
          async publish(entries) {
            const nearLeaseEnd = new AbortController();
            const done = new AbortController();
            void clock.sleep(leaseMs - leaseMs / 5, done.signal).then(() => nearLeaseEnd.abort());
            try {
              return await publisher.publish(entries, { signal: nearLeaseEnd.signal });
            } finally {
              done.abort();
            }
          },
        },
      };
    });
    expect((await loopRuleResults(leaseOnly)).failed).toEqual(["stop-aborts-publish"]);
  });

  it("a relay that retries what it gives back on stop (attempt counted, delayed) fails stop-gives-back", async () => {
    const retriesOnStop = bentRelay((options) => {
      const store: OutboxStore<never> = options.store;
      const clock = options.clock as ManualClock;
      return {
        ...options,
        store: wrapStore(store, {
          release: (ids, context) =>
            store.retry(
              ids.map((id) => ({ id, error: "stopping", availableAt: new Date(clock.now() + 1_000) })),
              context,
            ),
        }),
      };
    });
    expect((await loopRuleResults(retriesOnStop)).failed).toContain("stop-gives-back");
  });
});
