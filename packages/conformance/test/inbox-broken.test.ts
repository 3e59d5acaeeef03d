import { ManualClock } from "@outbox/core";
import {
  type InboxRecord,
  type InboxStore,
  MemoryInboxStore,
  type MemoryInboxTransaction,
  type RecordOutcome,
} from "@outbox/inbox";
import { describe, expect, it } from "vitest";
import { type InboxStoreHarness, inboxStoreChecks, wrapInboxStore } from "../src/inbox.js";
import { runChecks } from "../src/index.js";

// The inbox checks must be able to fail: each deliberately broken store below has to fail at least the
// named checks. A kit that passes these would pass anything.

type Tx = MemoryInboxTransaction;

function brokenInboxStore(patch: (inner: MemoryInboxStore) => Partial<InboxStore<Tx>>) {
  return async (clock: ManualClock): Promise<InboxStoreHarness<Tx>> => {
    const inner = new MemoryInboxStore();
    const effects = new Map<string, number>();
    return {
      store: wrapInboxStore(inner, patch(inner)),
      clock,
      async effect(tx, name) {
        tx.onCommit(() => effects.set(name, (effects.get(name) ?? 0) + 1));
      },
      countEffects: async (name) => effects.get(name) ?? 0,
      teardown: () => inner.close(),
    };
  };
}

async function failingChecks(create: (clock: ManualClock) => Promise<InboxStoreHarness<Tx>>) {
  const { failed } = await runChecks(
    inboxStoreChecks,
    () => create(new ManualClock()) as Promise<InboxStoreHarness<unknown>>,
    (h) => h.teardown(),
    { timeoutMs: 20_000 },
  );
  return failed;
}

const keyOf = (record: InboxRecord) => JSON.stringify([record.consumer, record.messageId]);

describe("inbox conformance: broken stores fail", () => {
  it("the reference store passes every check", async () => {
    expect(await failingChecks(brokenInboxStore(() => ({})))).toEqual([]);
  });

  it("no dedupe at all (record always says recorded)", async () => {
    const failed = await failingChecks(brokenInboxStore(() => ({ record: async () => "recorded" })));
    expect(failed).toEqual(expect.arrayContaining(["handle-once", "dedupe-key", "concurrent-deliveries"]));
  });

  it("check-then-insert without a lock (the race users hand-write)", async () => {
    const failed = await failingChecks(
      brokenInboxStore(() => {
        const committed = new Set<string>();
        return {
          async record(tx, record): Promise<RecordOutcome> {
            if (committed.has(keyOf(record))) return "duplicate";
            tx.onCommit(() => committed.add(keyOf(record)));
            return "recorded";
          },
        };
      }),
    );
    expect(failed).toContain("concurrent-deliveries");
    expect(failed).not.toContain("handle-once");
  });

  it("the key is recorded outside the handler's transaction", async () => {
    const failed = await failingChecks(
      brokenInboxStore((inner) => ({
        record: (_tx, record) => inner.transaction((own) => inner.record(own, record)),
      })),
    );
    expect(failed).toContain("rollback-leaves-no-key");
  });

  it("purge ignores the retention window", async () => {
    const failed = await failingChecks(
      brokenInboxStore((inner) => ({
        purge: (request) => inner.purge({ ...request, olderThan: new Date(8.64e15) }),
      })),
    );
    // The stats check purges too (the oldest key time must move), so it catches a broken purge as well.
    expect(failed).toEqual(["retention", "stats"]);
  });

  it("purge never drops anything", async () => {
    const failed = await failingChecks(brokenInboxStore(() => ({ purge: async () => 0 })));
    expect(failed).toEqual(["retention", "stats"]);
  });

  it("dead letters are not kept", async () => {
    const failed = await failingChecks(brokenInboxStore(() => ({ deadLetter: async () => true })));
    expect(failed).toEqual(expect.arrayContaining(["dead-letters", "dead-letter-pages"]));
  });

  it("failed attempts are not counted", async () => {
    const failed = await failingChecks(brokenInboxStore(() => ({ recordFailure: async () => 1 })));
    expect(failed).toContain("dead-letters");
  });

  it("requeue reports a move but changes nothing", async () => {
    const failed = await failingChecks(brokenInboxStore(() => ({ requeueDead: async (_consumer, ids) => ids.length })));
    expect(failed).toContain("dead-letters");
  });

  it("stats counts dead letters as processed keys (one count over every row of the consumer)", async () => {
    const failed = await failingChecks(
      brokenInboxStore((inner) => ({
        stats: async (consumer) =>
          (await inner.stats(consumer)).map((stats) => ({ ...stats, processed: stats.processed + stats.dead })),
      })),
    );
    expect(failed).toEqual(["stats"]);
  });

  it("stats counts leftover attempt counters of handled messages as failing", async () => {
    const failed = await failingChecks(
      brokenInboxStore((inner) => {
        const counted = new Map<string, Set<string>>();
        return {
          recordFailure: async (failure) => {
            const ids = counted.get(failure.consumer) ?? new Set<string>();
            counted.set(failure.consumer, ids.add(failure.messageId));
            return inner.recordFailure(failure);
          },
          stats: async (consumer) =>
            (await inner.stats(consumer)).map((stats) => ({
              ...stats,
              failing: counted.get(stats.consumer)?.size ?? 0,
            })),
        };
      }),
    );
    expect(failed).toEqual(["stats"]);
  });

  it("stats ignores the consumer it is given", async () => {
    const failed = await failingChecks(brokenInboxStore((inner) => ({ stats: () => inner.stats() })));
    expect(failed).toEqual(["stats"]);
  });

  it("listDead ignores its paging options", async () => {
    const failed = await failingChecks(
      brokenInboxStore((inner) => ({ listDead: (consumer) => inner.listDead(consumer) })),
    );
    expect(failed).toEqual(["dead-letter-pages"]);
  });
});
