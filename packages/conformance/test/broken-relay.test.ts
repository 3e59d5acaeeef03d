import { type ManualClock, OutboxError, OutboxErrorCode } from "@outbox/core";
import { describe, expect, it } from "vitest";
import { wrapStore } from "../src/index.js";
import { bentRelay, expectRelayPasses, relayRuleRunner, releaseRetriedRelay, timerAbortedRelay } from "./support.js";

// The relay-loop checks must be able to fail: each bent relay below breaks one rule of the loop
// (through its options: the store, publisher, retry policy or lock it is given) and has to fail
// the check for that rule.

const loopRules = [
  "last-attempt-dead-letters",
  "claim-reply-lost",
  "deposed-before-publish",
  "deposed-before-ack",
  "settle-retry-within-lease",
  "stop-aborts-publish",
  "stop-gives-back",
] as const;

const loopRuleResults = relayRuleRunner(loopRules);

describe("the kit catches broken relay loops", () => {
  it("OutboxRelay passes the relay loop's rules", () => expectRelayPasses(loopRules));

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
    const leaseOnly = timerAbortedRelay((leaseMs) => leaseMs - leaseMs / 5);
    expect((await loopRuleResults(leaseOnly)).failed).toEqual(["stop-aborts-publish"]);
  });

  it("a relay that retries what it gives back on stop (attempt counted, delayed) fails stop-gives-back", async () => {
    const retriesOnStop = releaseRetriedRelay("stopping", 1_000);
    expect((await loopRuleResults(retriesOnStop)).failed).toContain("stop-gives-back");
  });
});
