import {
  type Fence,
  type ManualClock,
  type OutboxEntry,
  OutboxError,
  OutboxErrorCode,
  type OutboxStore,
} from "@outbox/core";
import { MemoryStore, type MemoryTransaction } from "@outbox/memory";
import { describe, expect, it } from "vitest";
import { memoryStoreHarness, type StoreHarness, type storeChecks, wrapStore } from "../src/index.js";
import { runStoreCheck } from "./support.js";

// Stores that break one settle, stats, fence or attempt rule each, as bugs planted in the shipped
// stores did: each must fail the check written for its rule, with a message that names the rule.

type Tx = MemoryTransaction;
type CheckId = keyof typeof storeChecks;

/** A store built on the reference one with one rule broken by `patch`. */
function brokenStore(patch: (inner: MemoryStore, clock: ManualClock) => Partial<OutboxStore<Tx>>) {
  return async (clock: ManualClock): Promise<StoreHarness<Tx>> => {
    const inner = new MemoryStore({ clock });
    return {
      store: { ...wrapStore(inner, {}), ...patch(inner, clock) },
      clock,
      transaction: (work) => inner.transaction(work),
      teardown: () => inner.close(),
    };
  };
}

async function expectFailure(create: (clock: ManualClock) => Promise<StoreHarness<Tx>>, id: CheckId, rule: string) {
  const result = await runStoreCheck(create, id);
  expect(result.passed, `${id} must fail`).toBe(false);
  expect(result.message).toContain(rule);
}

const messages = <T>(input: T | readonly T[]): T[] => (Array.isArray(input) ? [...input] : [input as T]);

const newChecks: CheckId[] = [
  "settle-only-pending",
  "settle-by-former-holder",
  "ack-any-holder",
  "stats-oldest-created",
  "empty-key-order",
  "attempts-reported",
  "fence-race",
  "give-back-race",
];

describe("the kit catches broken stores (settles, stats, fences, attempts)", () => {
  it("the reference store passes every one of these checks", async () => {
    for (const id of newChecks) {
      expect(await runStoreCheck(memoryStoreHarness, id), id).toEqual({ passed: true, message: "" });
    }
  });

  it("a store whose ack publishes a dead entry fails settle-only-pending", async () => {
    // An ack without the pending guard: a dead entry it names ends up published.
    const ackOverDead = brokenStore((inner) => {
      const revived = new Set<string>();
      return {
        async ack(ids, context) {
          const dead = new Set((await inner.listDead({ limit: 1_000_000 })).map((entry) => entry.id));
          for (const id of ids) if (dead.has(id)) revived.add(id);
          await inner.ack(ids, context);
        },
        stats: async () => {
          const stats = await inner.stats();
          return { ...stats, dead: stats.dead - revived.size };
        },
        listDead: async (options) => (await inner.listDead(options)).filter((entry) => !revived.has(entry.id)),
      };
    });
    await expectFailure(ackOverDead, "settle-only-pending", "an ack must not publish a dead entry");
  });

  it("a store whose ack of a published entry moves its settle time fails settle-only-pending", async () => {
    // Remembers each ack's time, the last one winning, and purges by it.
    const reAck = brokenStore((inner, clock) => {
      const ackedAt = new Map<string, number>();
      return {
        async ack(ids, context) {
          await inner.ack(ids, context);
          for (const id of ids) ackedAt.set(id, clock.now());
        },
        async purge(request) {
          const late = [...ackedAt.values()].filter((at) => at >= request.olderThan.getTime()).length;
          return Math.max(0, (await inner.purge(request)) - late);
        },
      };
    });
    await expectFailure(reAck, "settle-only-pending", "must not move an entry's settle time");
  });

  it("a store whose retry leaves the claimer on the entry fails settle-by-former-holder", async () => {
    // The former holder's later release still takes an attempt back from the entry waiting for its retry.
    const staleRelease = brokenStore((inner) => {
      const retriedBy = new Map<string, string>();
      const takenBack = new Map<string, number>();
      return {
        async retry(items, context) {
          await inner.retry(items, context);
          for (const item of items) retriedBy.set(item.id, context.claimer);
        },
        async release(ids, context) {
          await inner.release(ids, context);
          for (const id of ids) {
            if (retriedBy.get(id) === context.claimer) takenBack.set(id, (takenBack.get(id) ?? 0) + 1);
          }
        },
        claim: async (request) =>
          (await inner.claim(request)).map((entry) => ({
            ...entry,
            attempts: entry.attempts - (takenBack.get(entry.id) ?? 0),
          })),
      };
    });
    await expectFailure(staleRelease, "settle-by-former-holder", "a stale release must not take back the attempt");
  });

  it("a store that acks only the acking claimer's own entries fails ack-any-holder", async () => {
    const ownOnly = brokenStore((inner) => {
      const holder = new Map<string, string>();
      return {
        async claim(request) {
          const entries = await inner.claim(request);
          for (const entry of entries) holder.set(entry.id, request.claimer);
          return entries;
        },
        ack: (ids, context) =>
          inner.ack(
            ids.filter((id) => holder.get(id) === context.claimer),
            context,
          ),
      };
    });
    await expectFailure(ownOnly, "ack-any-holder", "anyone may ack");
  });

  it("a store whose oldestPendingAt is the earliest availableAt fails stats-oldest-created", async () => {
    const byAvailability = brokenStore((inner, clock) => {
      const availableAt = new Map<string, number>();
      const settled = (ids: readonly string[]) => {
        for (const id of ids) availableAt.delete(id);
      };
      return {
        async enqueue(tx, input) {
          const list = messages(input);
          const ids = await inner.enqueue(tx, list);
          for (const [i, id] of ids.entries()) availableAt.set(id, list[i]?.availableAt?.getTime() ?? clock.now());
          return ids;
        },
        async retry(items, context) {
          await inner.retry(items, context);
          for (const item of items) if (availableAt.has(item.id)) availableAt.set(item.id, item.availableAt.getTime());
        },
        async ack(ids, context) {
          await inner.ack(ids, context);
          settled(ids);
        },
        async deadLetter(items, context) {
          await inner.deadLetter(items, context);
          settled(items.map((item) => item.id));
        },
        async stats() {
          const times = [...availableAt.values()];
          return { ...(await inner.stats()), oldestPendingAt: times.length > 0 ? new Date(Math.min(...times)) : null };
        },
      };
    });
    await expectFailure(byAvailability, "stats-oldest-created", "not its retry time");
  });

  /** Takes an empty-string key, stored as `stored` (null: as no key at all); entries come back with "". */
  const emptyKeyStore = (stored: string | null) =>
    brokenStore((inner) => {
      const empty = new Set<string>();
      const restore = (entry: OutboxEntry): OutboxEntry => (empty.has(entry.id) ? { ...entry, key: "" } : entry);
      return {
        async enqueue(tx, input) {
          const list = messages(input);
          const ids = await inner.enqueue(
            tx,
            list.map((m) => (m.key === "" ? { ...m, key: stored } : m)),
          );
          ids.forEach((id, i) => {
            if (list[i]?.key === "") empty.add(id);
          });
          return ids;
        },
        claim: async (request) => (await inner.claim(request)).map(restore),
        listDead: async (options) => (await inner.listDead(options)).map(restore),
      };
    });

  it("a store that takes an empty-string key as no key fails empty-key-order; one that keeps it as a key passes", async () => {
    await expectFailure(emptyKeyStore(null), "empty-key-order", "'' is a key, not the absence of one");
    expect(await runStoreCheck(emptyKeyStore("(empty key)"), "empty-key-order")).toEqual({
      passed: true,
      message: "",
    });
  });

  it("a store that refuses an empty-string key other than with OUTBOX_INVALID_ENTRY fails empty-key-order", async () => {
    const throwsOther = brokenStore((inner) => ({
      async enqueue(tx, input) {
        if (messages(input).some((m) => m.key === "")) throw new Error("key must not be empty");
        return inner.enqueue(tx, input);
      },
    }));
    await expectFailure(throwsOther, "empty-key-order", "OUTBOX_INVALID_ENTRY");
  });

  it("a store whose listDead reports one attempt too many fails attempts-reported", async () => {
    const plusOne = brokenStore((inner) => ({
      listDead: async (options) =>
        (await inner.listDead(options)).map((entry) => ({ ...entry, attempts: entry.attempts + 1 })),
    }));
    await expectFailure(plusOne, "attempts-reported", "after 4 claims, 4");
  });

  it("a store whose pendingSummary counts the attempt in progress fails attempts-reported", async () => {
    const summaryPlusOne = brokenStore((inner) => ({
      async pendingSummary(options) {
        const summary = await inner.pendingSummary(options);
        return {
          ...summary,
          blockedKeys: summary.blockedKeys.map((blocked) => ({ ...blocked, attempts: blocked.attempts + 1 })),
        };
      },
    }));
    await expectFailure(summaryPlusOne, "attempts-reported", "pendingSummary reports the failing head's attempts");
  });

  it("a store whose fence keeps the last token written, not the greatest, fails fence-race", async () => {
    // Checks the token against what it read when the call began, and writes its own when the call
    // ends, over whatever a racing call wrote meanwhile (an upsert without greatest()).
    const lastWriter = brokenStore((inner) => {
      const newest = new Map<string, bigint>();
      const fenced = async <T>(fence: Fence | undefined, work: () => Promise<T>): Promise<T> => {
        if (!fence) return work();
        const seen = newest.get(fence.lock);
        if (seen !== undefined && fence.token < seen) {
          throw new OutboxError(OutboxErrorCode.Fenced, "older token", {
            details: { lock: fence.lock, token: fence.token.toString(), newest: seen.toString() },
          });
        }
        const result = await work();
        newest.set(fence.lock, fence.token);
        return result;
      };
      return {
        claim: (request) => fenced(request.fence, () => inner.claim({ ...request, fence: undefined })),
        ack: (ids, context) => fenced(context.fence, () => inner.ack(ids, { claimer: context.claimer })),
      };
    });
    await expectFailure(lastWriter, "fence-race", "the newest token only ever grows");
  });

  it("a store that gives back the surplus of a cut run with its attempt still counted fails give-back-race", async () => {
    // Leases twice what the claim returns and gives the rest back, but the attempt it counted stays.
    const countsGiveBack = brokenStore((inner) => {
      const extra = new Map<string, number>();
      return {
        async claim(request) {
          const leased = await inner.claim({ ...request, limit: request.limit * 2 });
          const surplus = leased.slice(request.limit);
          await inner.release(
            surplus.map((entry) => entry.id),
            { claimer: request.claimer, fence: request.fence },
          );
          for (const entry of surplus) extra.set(entry.id, (extra.get(entry.id) ?? 0) + 1);
          return leased
            .slice(0, request.limit)
            .map((entry) => ({ ...entry, attempts: entry.attempts + (extra.get(entry.id) ?? 0) }));
        },
      };
    });
    await expectFailure(countsGiveBack, "give-back-race", "must not count an attempt");
  });
});
