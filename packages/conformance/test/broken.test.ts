import {
  checkLockCall,
  deadLetterFilter,
  heldBack,
  KeyFailures,
  type LockBackend,
  ManualClock,
  matchesDeadLetterFilter,
  type OutboxEntry,
  OutboxError,
  OutboxErrorCode,
  type OutboxPublisher,
  OutboxRelay,
  type OutboxRelayOptions,
  type OutboxStore,
  type PublishOutcome,
  permanentFailure,
  transientFailure,
} from "@outbox/core";
import { MemoryLockBackend, MemoryPublisher, MemoryStore, type MemoryTransaction } from "@outbox/memory";
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
import {
  bentRelay,
  expectRelayPasses,
  type LockContextExtras,
  type LockPatch,
  lockResults,
  relayRuleRunner,
  releaseRetriedRelay,
  runStoreCheck,
  timerAbortedRelay,
} from "./support.js";

// The kit must be able to fail: each deliberately broken adapter below has to fail at
// least the named check. A kit that passes these would pass anything.

type Tx = MemoryTransaction;

/** A store built on the reference one with one rule broken by `patch`. */
function brokenStore(patch: (inner: MemoryStore, clock: ManualClock) => Partial<OutboxStore<Tx>>) {
  return async (clock: ManualClock): Promise<StoreHarness<Tx>> => {
    const inner = new MemoryStore({ clock });
    const base = wrapStore(inner, {});
    return {
      store: { ...base, ...patch(inner, clock) },
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
    { timeoutMs: 20_000 },
  );
  return failed;
}

/** The failure message of one check against a broken store: it must say the rule, not just values. */
async function storeFailure(create: (clock: ManualClock) => Promise<StoreHarness<Tx>>, id: keyof typeof storeChecks) {
  const { errors } = await runChecks(
    { [id]: storeChecks[id] } as Pick<typeof storeChecks, typeof id>,
    () => create(new ManualClock()) as Promise<StoreHarness<unknown>>,
    (h) => h.teardown(),
  );
  return String((errors[id] as Error | undefined)?.message ?? "");
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

describe("the kit catches broken stores (contract v2 rules)", () => {
  it("a store that checks the fence on ack and retry only fails fenced-settles", async () => {
    const partial = brokenStore((inner) => ({
      deadLetter: (items, context) => inner.deadLetter(items, { claimer: context.claimer }),
      release: (ids, context) => inner.release(ids, { claimer: context.claimer }),
    }));
    expect(await failingStoreChecks(partial)).toContain("fenced-settles");
    expect(await storeFailure(partial, "fenced-settles")).toContain("deadLetter with an older token must be rejected");
  });

  it("a store whose pendingSummary ignores scanLimit, or counts leased entries as waiting, fails pending-summary", async () => {
    const unbounded = brokenStore((inner) => ({
      pendingSummary: (options) => inner.pendingSummary({ ...options, scanLimit: 1_000_000 }),
    }));
    expect(await failingStoreChecks(unbounded)).toContain("pending-summary");
    expect(await storeFailure(unbounded, "pending-summary")).toContain("scanLimit bounds the scan");
    const leasedCount = brokenStore((inner) => ({
      async pendingSummary(options) {
        const summary = await inner.pendingSummary(options);
        // Also counts the leased entries (the in-flight warm run) as waiting.
        const inFlight = (await inner.stats()).inFlight;
        return { ...summary, retryWaiting: summary.retryWaiting + inFlight };
      },
    }));
    expect(await storeFailure(leasedCount, "pending-summary")).toContain("pending entries only");
  });

  it("a store whose blocked keys ignore their bound, or come in key order, fails pending-summary-blocked-keys", async () => {
    const unbounded = brokenStore((inner) => ({
      pendingSummary: (options) => inner.pendingSummary({ ...options, blockedKeys: 100 }),
    }));
    expect(await storeFailure(unbounded, "pending-summary-blocked-keys")).toContain("blockedKeys bounds the keys");
    const byKey = brokenStore((inner) => ({
      async pendingSummary(options) {
        const summary = await inner.pendingSummary(options);
        const blockedKeys = [...summary.blockedKeys].sort((a, b) => (a.key < b.key ? -1 : 1));
        return { ...summary, blockedKeys };
      },
    }));
    expect(await storeFailure(byKey, "pending-summary-blocked-keys")).toContain("most pending first");
  });

  it("a store whose releaseClaimer skips the fence check fails release-claimer", async () => {
    const unfenced = brokenStore((inner) => ({
      releaseClaimer: (context) => inner.releaseClaimer({ claimer: context.claimer }),
    }));
    expect(await failingStoreChecks(unfenced)).toContain("release-claimer");
    expect(await storeFailure(unfenced, "release-claimer")).toContain("older token must be rejected");
  });

  it("a store that leases first and checks the fence afterwards fails fenced-claim-atomic", async () => {
    const leaseThenCheck = brokenStore((inner) => ({
      claim: async (request) => {
        const entries = await inner.claim({ ...request, fence: undefined });
        // The fence check comes second, outside the claim: the leases stay when it throws.
        if (request.fence) await inner.ack([], { claimer: request.claimer, fence: request.fence });
        return entries;
      },
    }));
    expect(await failingStoreChecks(leaseThenCheck)).toContain("fenced-claim-atomic");
    expect(await storeFailure(leaseThenCheck, "fenced-claim-atomic")).toContain("must lease nothing");
  });

  it("a store that purges at or before its cutoff, or turns an empty error into null, fails purge-cutoff-edge", async () => {
    const inclusive = brokenStore((inner) => ({
      purge: (request) => inner.purge({ ...request, olderThan: new Date(request.olderThan.getTime() + 1) }),
    }));
    expect(await storeFailure(inclusive, "purge-cutoff-edge")).toContain("settled exactly at the cutoff");
    const nullError = brokenStore((inner) => ({
      listDead: async (options) =>
        (await inner.listDead(options)).map((entry) => ({ ...entry, lastError: entry.lastError || null })),
    }));
    expect(await storeFailure(nullError, "purge-cutoff-edge")).toContain("empty error");
  });

  it("a store that breaks count ties the wrong way, or counts failed entries only, fails pending-summary-ties", async () => {
    const descending = brokenStore((inner) => ({
      async pendingSummary(options) {
        const summary = await inner.pendingSummary({ ...options, hotKeys: 100, blockedKeys: 100 });
        const order = (a: { key: string; pending: number }, b: { key: string; pending: number }) =>
          b.pending - a.pending || (a.key < b.key ? 1 : -1);
        return {
          ...summary,
          hotKeys: [...summary.hotKeys].sort(order).slice(0, options?.hotKeys ?? 10),
          blockedKeys: [...summary.blockedKeys].sort(order).slice(0, options?.blockedKeys ?? 10),
        };
      },
    }));
    expect(await storeFailure(descending, "pending-summary-ties")).toContain("then by key");
    const failedOnly = brokenStore((inner) => ({
      async pendingSummary(options) {
        const summary = await inner.pendingSummary(options);
        // Leaves out the delayed start (one keyless entry): only entries that failed count.
        return { ...summary, retryWaiting: summary.retryWaiting - 1 };
      },
    }));
    expect(await storeFailure(failedOnly, "pending-summary-ties")).toContain("delayed start");
  });

  it("a store that purges by creation time fails purge-by-settle-time", async () => {
    // Records each entry's createdAt as its settle time, by settling on a rewound clock.
    const byCreation = brokenStore((inner, clock) => {
      const createdAt = new Map<string, number>();
      const onCreationClock = async (ids: readonly string[], settle: () => Promise<void>) => {
        const now = clock.now();
        const created = Math.min(...ids.map((id) => createdAt.get(id) ?? now));
        clock.advance(created - now);
        try {
          await settle();
        } finally {
          clock.advance(now - created);
        }
      };
      return {
        claim: async (request) => {
          const entries = await inner.claim(request);
          for (const e of entries) createdAt.set(e.id, e.createdAt.getTime());
          return entries;
        },
        ack: (ids, context) => onCreationClock(ids, () => inner.ack(ids, context)),
        deadLetter: (items, context) =>
          onCreationClock(
            items.map((i) => i.id),
            () => inner.deadLetter(items, context),
          ),
      };
    });
    expect(await failingStoreChecks(byCreation)).toContain("purge-by-settle-time");
    const everything = brokenStore((inner) => ({
      purge: (request) => inner.purge({ ...request, olderThan: new Date(8.64e15) }),
    }));
    expect(await failingStoreChecks(everything)).toContain("purge-by-settle-time");
  });

  it("a store that lists dead entries newest first fails list-dead-order", async () => {
    const newestFirst = brokenStore((inner) => ({
      listDead: async (options) => {
        const all = await inner.listDead();
        return all.reverse().slice(0, options?.limit ?? 100);
      },
    }));
    expect(await failingStoreChecks(newestFirst)).toContain("list-dead-order");
  });

  it("a store that ignores listDead's after cursor fails list-dead-order", async () => {
    const noPaging = brokenStore((inner) => ({
      listDead: (options) => inner.listDead(options?.limit === undefined ? {} : { limit: options.limit }),
    }));
    expect(await failingStoreChecks(noPaging)).toContain("list-dead-order");
  });

  it("the reference store passes list-dead-filters; a store that does not declare the filters skips it", async () => {
    expect(await runStoreCheck(memoryStoreHarness, "list-dead-filters")).toEqual({ passed: true, message: "" });
    const undeclared = brokenStore(() => ({ capabilities: { wakeUps: true, transactions: true } }));
    const { skipped } = await runChecks(
      { "list-dead-filters": storeChecks["list-dead-filters"] },
      () => undeclared(new ManualClock()) as Promise<StoreHarness<unknown>>,
      (h) => h.teardown(),
    );
    expect(skipped).toEqual(["list-dead-filters"]);
  });

  it("a store that ignores errorContains fails list-dead-filters", async () => {
    const noErrorFilter = brokenStore((inner) => ({
      listDead: (options) => inner.listDead({ ...options, errorContains: undefined }),
    }));
    const broken = await runStoreCheck(noErrorFilter, "list-dead-filters");
    expect(broken.passed).toBe(false);
    expect(broken.message).toContain('listDead({"errorContains":"timeout"}) must return exactly the matching');
  });

  it("a store that filters each page after reading it fails list-dead-filters", async () => {
    // Reads `limit` dead entries, then drops those that do not match: short pages, and paging stops early.
    const perPage = brokenStore((inner) => ({
      async listDead(options = {}) {
        const filter = deadLetterFilter(options);
        const page = await inner.listDead({ limit: options.limit, after: options.after });
        return page.filter((entry) => matchesDeadLetterFilter(entry, filter));
      },
    }));
    const broken = await runStoreCheck(perPage, "list-dead-filters");
    expect(broken.passed).toBe(false);
    expect(broken.message).toContain("paged 2 at a time");
  });

  it("a store that passes errorContains to LIKE unescaped fails list-dead-filters", async () => {
    // % and _ are wildcards, a backslash escapes: what `LIKE '%' || $1 || '%'` does with the raw text.
    const literal = (text: string) => text.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
    const like = (needle: string) => {
      const pattern = needle.replace(/\\(.)|([%_])|([^\\%_]+)/gsu, (_, escaped, wild, plain) =>
        escaped !== undefined ? literal(escaped) : wild !== undefined ? (wild === "%" ? ".*" : ".") : literal(plain),
      );
      return new RegExp(pattern, "isu");
    };
    const unescaped = brokenStore((inner) => ({
      async listDead(options = {}) {
        const { errorContains, limit, ...rest } = options;
        if (errorContains === undefined) return inner.listDead(options);
        const all = await inner.listDead({ ...rest, limit: 1_000_000 });
        return all.filter((entry) => like(errorContains).test(entry.lastError ?? "")).slice(0, limit ?? 100);
      },
    }));
    const broken = await runStoreCheck(unescaped, "list-dead-filters");
    expect(broken.passed).toBe(false);
    expect(broken.message).toContain("% in errorContains is a plain character");
  });

  it("a store whose key filter ignores case or trailing spaces fails list-dead-filters", async () => {
    // A case-insensitive PAD SPACE collation (MySQL's default): 'k1' = 'K1 '.
    const collated = brokenStore((inner) => ({
      async listDead(options = {}) {
        const { key, limit, ...rest } = options;
        if (typeof key !== "string") return inner.listDead(options);
        const fold = (value: string) => value.trimEnd().toLowerCase();
        const all = await inner.listDead({ ...rest, limit: 1_000_000 });
        return all.filter((entry) => entry.key !== null && fold(entry.key) === fold(key)).slice(0, limit ?? 100);
      },
    }));
    const broken = await runStoreCheck(collated, "list-dead-filters");
    expect(broken.passed).toBe(false);
    expect(broken.message).toContain('listDead({"key":"k1"}) must return exactly the matching');
  });

  it("a store that declares the filters but takes any value fails list-dead-filters", async () => {
    const lax = brokenStore((inner) => ({
      async listDead(options = {}) {
        const valid = (value: unknown) => typeof value === "string" && value.length > 0 && value.length <= 4_096;
        return inner.listDead({
          ...options,
          topic: valid(options.topic) ? options.topic : undefined,
          key: options.key === null || valid(options.key) ? options.key : undefined,
          errorContains: valid(options.errorContains) ? options.errorContains : undefined,
        });
      },
    }));
    const broken = await runStoreCheck(lax, "list-dead-filters");
    expect(broken.passed).toBe(false);
    expect(broken.message).toContain("listDead must refuse an empty topic with OUTBOX_INVALID_OPTIONS");
  });

  it("a store whose inFlight ignores lease expiry fails in-flight-expiry", async () => {
    const sticky = brokenStore((inner) => {
      const leased = new Set<string>();
      const settle = (ids: readonly string[]) => {
        for (const id of ids) leased.delete(id);
      };
      return {
        claim: async (request) => {
          const entries = await inner.claim(request);
          for (const e of entries) leased.add(e.id);
          return entries;
        },
        ack: async (ids, context) => {
          await inner.ack(ids, context);
          settle(ids);
        },
        release: async (ids, context) => {
          await inner.release(ids, context);
          settle(ids);
        },
        stats: async () => ({ ...(await inner.stats()), inFlight: leased.size }),
      };
    });
    expect(await failingStoreChecks(sticky)).toContain("in-flight-expiry");
  });

  it("a single-writer store fails late-commit with a message that says so, and declaring it skips the check", async () => {
    // One transaction at a time, like SQLite or PGlite.
    const singleWriter = (concurrentWriters?: boolean) => async (clock: ManualClock) => {
      const inner = new MemoryStore({ clock });
      let queue: Promise<unknown> = Promise.resolve();
      const harness: StoreHarness<Tx> = {
        store: wrapStore(inner, {
          capabilities: { ...inner.capabilities, ...(concurrentWriters === undefined ? {} : { concurrentWriters }) },
        }),
        clock,
        transaction: (work) => {
          const run = queue.then(() => inner.transaction(work));
          queue = run.catch(() => undefined);
          return run;
        },
        teardown: () => inner.close(),
      };
      return harness;
    };
    const only = { "late-commit": storeChecks["late-commit"] };
    const undeclared = await runChecks(
      only,
      () => singleWriter()(new ManualClock()) as Promise<StoreHarness<unknown>>,
      (h) => h.teardown(),
      { timeoutMs: 30_000 },
    );
    expect(undeclared.failed).toEqual(["late-commit"]);
    expect(undeclared.hung).toEqual([]);
    expect(String((undeclared.errors["late-commit"] as Error).message)).toContain("concurrentWriters: false");
    const declared = await runChecks(
      only,
      () => singleWriter(false)(new ManualClock()) as Promise<StoreHarness<unknown>>,
      (h) => h.teardown(),
    );
    expect(declared.skipped).toEqual(["late-commit"]);
  });

  it("runChecks names a check that hangs, honours skip, and carries on with the next check", async () => {
    const hanging = brokenStore((inner) => ({
      stats: (): Promise<never> => new Promise(() => {}),
      listDead: (options) => inner.listDead(options),
    }));
    const some = {
      "ack-idempotent": storeChecks["ack-idempotent"],
      "list-dead-order": storeChecks["list-dead-order"],
      "round-trip": storeChecks["round-trip"],
    };
    const result = await runChecks(
      some,
      () => hanging(new ManualClock()) as Promise<StoreHarness<unknown>>,
      (h) => h.teardown(),
      { timeoutMs: 300, skip: { "round-trip": "skipped here to prove skip works" } },
    );
    expect(result.hung).toEqual(["ack-idempotent"]);
    expect(result.failed).toEqual(["ack-idempotent"]);
    expect(String((result.errors["ack-idempotent"] as Error).message)).toContain('check "ack-idempotent"');
    expect(result.passed).toEqual(["list-dead-order"]);
    expect(result.skipped).toEqual(["round-trip"]);
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

  it("a relay whose stop() does not wait for the in-flight batch fails stop-drains", async () => {
    const hasty = (options: OutboxRelayOptions): RelayUnderTest => {
      const relay = new OutboxRelay(options);
      relay.on("error", () => {});
      return {
        runOnce: () => relay.runOnce(),
        start: () => relay.start(),
        stop: async () => {
          void relay.stop();
        },
      };
    };
    // max-in-flight stops the relay too, and finds leases left behind.
    expect(await failingRelayChecks(memoryStoreHarness, hasty)).toEqual(["stop-drains", "max-in-flight"]);
  });

  it("stop-drains and max-in-flight use the supplied factory: without start()/stop() they are skipped, not run on another relay", async () => {
    const runOnceOnly = (options: OutboxRelayOptions): RelayUnderTest => {
      const relay = new OutboxRelay(options);
      relay.on("error", () => {});
      return { runOnce: () => relay.runOnce() };
    };
    const { create, dispose } = relayCheckContext({ createStore: memoryStoreHarness, createRelay: runOnceOnly });
    const { skipped } = await runChecks(relayChecks, create, dispose);
    expect(skipped).toEqual(["stop-drains", "max-in-flight", "stop-aborts-publish", "stop-gives-back"]);
  });

  it("a leader that omits the fence on ack fails deposed-leader-cannot-ack, even when it re-checks leadership", async () => {
    // The real relay (it re-checks leadership before acking), with its acks stripped of the fence.
    const unfencedAck = (options: OutboxRelayOptions): RelayUnderTest => {
      const store = options.store;
      const relay = new OutboxRelay({
        ...options,
        store: wrapStore(store, { ack: (ids, context) => store.ack(ids, { claimer: context.claimer }) }),
      });
      relay.on("error", () => {});
      return relay;
    };
    expect(await failingRelayChecks(memoryStoreHarness, unfencedAck)).toEqual(["deposed-leader-cannot-ack"]);
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

  it("a publisher that returns its outcomes in the wrong order fails outcome-order", async () => {
    // Reversed: [published, permanent, published] reads the same backwards, so only an asymmetric batch sees it.
    const reversed = new MemoryPublisher({
      outcome: (entry) =>
        entry.payload.byteLength > 1_000 ? permanentFailure(new Error("too large")) : { status: "published" },
    });
    const { failed } = await runChecks(
      publisherChecks,
      () =>
        memoryHarness(
          { publish: async (entries, options) => (await reversed.publish(entries, options)).reverse() },
          reversed,
        ),
      (h) => h.teardown(),
    );
    expect(failed).toContain("outcome-order");
    expect(failed).not.toContain("per-entry-failure");
  });

  it("a publisher that does not carry the outbox metadata fails metadata-headers", async () => {
    const inner = new MemoryPublisher();
    const bare: OutboxPublisher = {
      // The broker assigns its own message ids; the outbox id is lost.
      publish: (entries, options) =>
        inner.publish(
          entries.map((e) => ({ ...e, id: `broker-${e.id}` })),
          options,
        ),
    };
    const { failed } = await runChecks(
      publisherChecks,
      () => memoryHarness(bare, inner),
      (h) => h.teardown(),
    );
    expect(failed).toContain("metadata-headers");
  });

  it("a publisher that reports a timed-out send as permanent fails abort-mid-publish", async () => {
    const inner = new MemoryPublisher();
    const harsh: OutboxPublisher = {
      async publish(entries, options) {
        if (options?.signal?.aborted) {
          return entries.map((): PublishOutcome => transientFailure(new Error("not sent: aborted")));
        }
        // Waits for the broker's answer; when the wait is cut short, blames the entries.
        await new Promise((resolve) => setTimeout(resolve, 10));
        if (options?.signal?.aborted) {
          return entries.map((): PublishOutcome => permanentFailure(new Error("send timed out")));
        }
        return inner.publish(entries, options);
      },
    };
    const { failed } = await runChecks(
      publisherChecks,
      () => memoryHarness(harsh, inner),
      (h) => h.teardown(),
    );
    expect(failed).toContain("abort-mid-publish");
    expect(failed).not.toContain("aborted-signal");
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

  it("a lock whose renew revives an expired holding fails former-holder-cannot-renew", async () => {
    const failed = await failingLockChecks((inner) => ({
      renew: async (name, holder, ttl) => (await inner.tryAcquire(name, holder, ttl)) !== null,
    }));
    expect(failed).toContain("former-holder-cannot-renew");
  });

  it("a lock that rounds TTLs down to whole seconds fails short-ttl", async () => {
    const seconds = (ttl: number) => Math.floor(ttl / 1_000) * 1_000;
    const failed = await failingLockChecks((inner) => ({
      tryAcquire: (name, holder, ttl) => inner.tryAcquire(name, holder, seconds(ttl)),
      renew: (name, holder, ttl) => inner.renew(name, holder, seconds(ttl)),
    }));
    expect(failed).toContain("short-ttl");
    expect(failed).not.toContain("expiry");
  });

  it("a lock that takes any argument fails bad-arguments", async () => {
    const lenient = (ttl: number) => (Number.isFinite(ttl) && ttl > 0 ? ttl : 60_000);
    const failed = await failingLockChecks((inner) => ({
      tryAcquire: (name, holder, ttl) => inner.tryAcquire(name || "unnamed", holder || "anyone", lenient(ttl)),
      renew: (name, holder, ttl) => inner.renew(name || "unnamed", holder || "anyone", lenient(ttl)),
      release: (name, holder) => inner.release(name || "unnamed", holder || "anyone"),
    }));
    expect(failed).toContain("bad-arguments");
  });

  it("a lock whose renew never lets it expire fails renewal-expires", async () => {
    const failed = await failingLockChecks((inner) => ({
      renew: (name, holder, ttl) => inner.renew(name, holder, ttl * 100),
    }));
    expect(failed).toContain("renewal-expires");
  });

  it("a lock that reports what the client remembers, not the server, fails lost-holding", async () => {
    const failed = await failingLockChecks((inner) => {
      const acquired = new Set<string>();
      return {
        tryAcquire: async (name, holder, ttl) => {
          const token = await inner.tryAcquire(name, holder, ttl);
          if (token !== null) acquired.add(`${name}/${holder}`);
          return token;
        },
        renew: async (name, holder, ttl) => (await inner.renew(name, holder, ttl)) || acquired.has(`${name}/${holder}`),
      };
    });
    expect(failed).toContain("lost-holding");
  });

  it("tokens-survive-restart restarts the server only when the harness opts in", async () => {
    let restarts = 0;
    const clock = new ManualClock();
    const harness = async (allowServerRestarts: boolean): Promise<LockHarness & LockContextExtras> => {
      const backend = new MemoryLockBackend({ clock });
      return {
        backend,
        ttlMs: 1_000,
        allowServerRestarts,
        elapse: async (ms) => clock.advance(ms),
        restart: async () => {
          restarts += 1;
          backend.restart();
        },
        teardown: () => backend.close(),
      };
    };
    const only = { "tokens-survive-restart": lockChecks["tokens-survive-restart"] };
    const off = await runChecks(
      only,
      () => harness(false),
      (h) => h.teardown(),
    );
    expect(off.skipped).toEqual(["tokens-survive-restart"]);
    expect(restarts).toBe(0);
    const on = await runChecks(
      only,
      () => harness(true),
      (h) => h.teardown(),
    );
    expect(on.passed).toEqual(["tokens-survive-restart"]);
    expect(restarts).toBe(1);
  });
});

/** The lock checks the in-memory backend fails with some methods replaced. */
async function failingLockChecks(patch: LockPatch, ttlMs = 1_000) {
  return (await lockResults(patch, ttlMs)).failed;
}

/** A publisher harness over the in-memory broker `inner`, publishing through `publisher`. */
async function memoryHarness(
  publisher: OutboxPublisher,
  inner: MemoryPublisher,
): Promise<PublisherHarness & { largePayloadBytes: number }> {
  return {
    largePayloadBytes: 100,
    publisher,
    topic: async () => uniqueName("t"),
    receive: async (topic) => inner.topic(topic).map((m) => ({ ...m, id: m.entryId })),
    permanentFailure: async (topic) => ({ topic, key: null, payload: new Uint8Array(2_000) }),
    teardown: async () => {},
  };
}

// Issue 22: runs across a gap, attempts on give-back, transient failures inside a run, failures
// inside the broker client, round-trip exactness.

/**
 * A small array store for the run rules, whose claim has the bug of selecting from the
 * *claimable* entries only (a SQL `WHERE available_at <= now AND unleased` before the run is
 * computed): an entry that cannot be claimed yet vanishes, and the run goes on past it.
 * "drops-leased" filters out leased entries only; "contract" walks every pending entry, as the
 * contract says.
 */
function filterFirstStore(mode: "contract" | "drops-unavailable" | "drops-leased") {
  return async (clock: ManualClock): Promise<StoreHarness<Tx>> => {
    interface Row {
      id: number;
      topic: string;
      key: string | null;
      payload: Uint8Array;
      headers: Record<string, string>;
      availableAt: number;
      attempts: number;
      claimer: string | null;
      leaseUntil: number;
      status: "pending" | "published";
      lastError: string | null;
    }
    const rows: Row[] = [];
    const carrier = new MemoryStore({ clock });
    const owned = (id: string, claimer: string) =>
      rows.find((r) => r.id === Number(id) && r.status === "pending" && r.claimer === claimer);
    const store: OutboxStore<Tx> = {
      ...wrapStore(carrier, {}),
      capabilities: { wakeUps: false, transactions: false },
      async enqueue(tx, messages) {
        const list = Array.isArray(messages) ? messages : [messages];
        // Validation only: the carrier store stages nothing we read.
        await carrier.enqueue(tx, list);
        return list.map((m) => {
          const id = rows.length + 1;
          rows.push({
            id,
            topic: m.topic,
            key: m.key ?? null,
            payload: typeof m.payload === "string" ? new TextEncoder().encode(m.payload) : m.payload,
            headers: { ...m.headers },
            availableAt: m.availableAt?.getTime() ?? clock.now(),
            attempts: 0,
            claimer: null,
            leaseUntil: 0,
            status: "pending",
            lastError: null,
          });
          return String(id);
        });
      },
      async claim(request) {
        const now = clock.now();
        const claimable = (r: Row) => r.availableAt <= now && r.leaseUntil <= now;
        const pending = rows.filter((r) => r.status === "pending");
        const walked =
          mode === "contract"
            ? pending
            : pending.filter((r) => (mode === "drops-leased" ? r.leaseUntil <= now : r.availableAt <= now));
        const closed = new Set<string>();
        const out = [];
        for (const row of walked) {
          if (out.length >= request.limit) break;
          if (row.key !== null && closed.has(row.key)) continue;
          if (!claimable(row)) {
            if (row.key !== null) closed.add(row.key);
            continue;
          }
          row.attempts += 1;
          row.claimer = request.claimer;
          row.leaseUntil = now + request.leaseMs;
          out.push({
            id: String(row.id),
            topic: row.topic,
            key: row.key,
            payload: row.payload,
            headers: { ...row.headers },
            idempotencyKey: String(row.id),
            createdAt: new Date(now),
            availableAt: new Date(row.availableAt),
            attempts: row.attempts,
            lastError: row.lastError,
          });
        }
        return out;
      },
      async ack(ids) {
        for (const id of ids) {
          const row = rows.find((r) => r.id === Number(id));
          if (row) row.status = "published";
        }
      },
      async retry(items, context) {
        for (const item of items) {
          const row = owned(item.id, context.claimer);
          if (!row) continue;
          Object.assign(row, { availableAt: item.availableAt.getTime(), leaseUntil: 0, claimer: null });
          row.lastError = item.error;
        }
      },
      async release(ids, context) {
        for (const id of ids) {
          const row = owned(id, context.claimer);
          if (row) Object.assign(row, { attempts: row.attempts - 1, leaseUntil: 0, claimer: null });
        }
      },
    };
    return { store, clock, transaction: (work) => carrier.transaction(work), teardown: () => carrier.close() };
  };
}

describe("the kit catches broken stores (issue 22 rules)", () => {
  it("a store whose run continues past an entry that cannot be claimed yet fails key-run-gap", async () => {
    expect(await runStoreCheck(filterFirstStore("contract"), "key-run-gap")).toEqual({ passed: true, message: "" });
    const broken = await runStoreCheck(filterFirstStore("drops-unavailable"), "key-run-gap");
    expect(broken.passed).toBe(false);
    expect(broken.message).toContain("not available yet");
  });

  it("a store whose run continues past a successor leased by another claimer fails key-run-gap", async () => {
    const broken = await runStoreCheck(filterFirstStore("drops-leased"), "key-run-gap");
    expect(broken.passed).toBe(false);
    expect(broken.message).toContain("never e3 while e2 is leased");
  });

  it("a store that gives back the surplus of a cut run with its attempt still counted fails give-back-attempts", async () => {
    // Leases twice what the claim returns and gives the rest back, but the attempt it counted stays.
    const countsGiveBack = brokenStore((inner) => {
      const extra = new Map<string, number>();
      return {
        claim: async (request) => {
          const leased = await inner.claim({ ...request, limit: request.limit * 2 });
          const kept = leased.slice(0, request.limit);
          const surplus = leased.slice(request.limit);
          await inner.release(
            surplus.map((e) => e.id),
            { claimer: request.claimer, fence: request.fence },
          );
          for (const e of surplus) extra.set(e.id, (extra.get(e.id) ?? 0) + 1);
          return kept.map((e) => ({ ...e, attempts: e.attempts + (extra.get(e.id) ?? 0) }));
        },
      };
    });
    expect(await failingStoreChecks(countsGiveBack)).toContain("give-back-attempts");
    expect((await runStoreCheck(countsGiveBack, "give-back-attempts")).message).toContain("must not count an attempt");
  });

  it("a store that turns an empty-string key into null, or strips NUL from header values, fails round-trip-edges", async () => {
    const nullsEmptyKeys = brokenStore((inner) => ({
      enqueue: (tx, messages) =>
        inner.enqueue(
          tx,
          (Array.isArray(messages) ? messages : [messages]).map((m) => ({ ...m, key: m.key || null })),
        ),
    }));
    const broken = await runStoreCheck(nullsEmptyKeys, "round-trip-edges");
    expect(broken.passed).toBe(false);
    expect(broken.message).toContain("empty-string key");
    const stripsNul = brokenStore((inner) => ({
      claim: async (request) =>
        (await inner.claim(request)).map((e) => ({
          ...e,
          headers: Object.fromEntries(Object.entries(e.headers).map(([n, v]) => [n, v.replaceAll("\u0000", "")])),
        })),
    }));
    expect((await runStoreCheck(stripsNul, "round-trip-edges")).message).toContain("NUL in a header value");
    // A store that refuses what it cannot keep, with OUTBOX_INVALID_ENTRY, passes.
    const refusesNul = brokenStore((inner) => ({
      enqueue: async (tx, messages) => {
        const list = Array.isArray(messages) ? messages : [messages];
        if (list.some((m) => Object.values<string>(m.headers ?? {}).some((v) => v.includes("\u0000")))) {
          throw new OutboxError(OutboxErrorCode.InvalidEntry, "NUL in a header value");
        }
        return inner.enqueue(tx, list);
      },
    }));
    expect((await runStoreCheck(refusesNul, "round-trip-edges")).passed).toBe(true);
    // ...but any other error is not a refusal.
    const throwsOther = brokenStore((inner) => ({
      enqueue: async (tx, messages) => {
        const list = Array.isArray(messages) ? messages : [messages];
        if (list.some((m) => Object.values<string>(m.headers ?? {}).some((v) => v.includes("\u0000")))) {
          throw new Error("invalid byte sequence for encoding UTF8: 0x00");
        }
        return inner.enqueue(tx, list);
      },
    }));
    expect((await runStoreCheck(throwsOther, "round-trip-edges")).message).toContain("OUTBOX_INVALID_ENTRY");
  });
});

/**
 * An in-memory "broker client" with the failure modes of real ones: `failNext()` makes the next
 * send fail after it left the publisher (a lost connection), and, as Pub/Sub's client does, a
 * failed send pauses its ordering key: later sends of that key fail until `resume(key)`.
 */
class OrderingClient {
  readonly broker = new MemoryPublisher();
  readonly paused = new Set<string>();
  #failNext = false;

  failNext(): void {
    this.#failNext = true;
  }

  async send(entry: OutboxEntry): Promise<void> {
    if (entry.key !== null && this.paused.has(entry.key)) throw new Error(`ordering key ${entry.key} is paused`);
    if (this.#failNext) {
      this.#failNext = false;
      if (entry.key !== null) this.paused.add(entry.key);
      throw new Error("connection lost mid-publish");
    }
    await this.broker.publish([entry]);
  }

  resume(key: string): void {
    this.paused.delete(key);
  }
}

function clientPublisher(
  client: OrderingClient,
  options: { onLoss: "transient" | "permanent"; resumes: boolean },
): OutboxPublisher {
  return {
    async publish(entries) {
      const failed = new KeyFailures();
      const outcomes: PublishOutcome[] = [];
      for (const entry of entries) {
        if (failed.blocked(entry)) {
          outcomes.push(heldBack(entry));
          continue;
        }
        try {
          await client.send(entry);
          outcomes.push({ status: "published" });
        } catch (error) {
          failed.fail(entry);
          outcomes.push(options.onLoss === "permanent" ? permanentFailure(error) : transientFailure(error));
          if (options.resumes && entry.key !== null) client.resume(entry.key);
        }
      }
      return outcomes;
    },
  };
}

async function brokerFailureResult(options: { onLoss: "transient" | "permanent"; resumes: boolean }) {
  const only = { "broker-failure": publisherChecks["broker-failure"] };
  const { passed, errors } = await runChecks(
    only,
    async () => {
      const client = new OrderingClient();
      const harness = await memoryHarness(clientPublisher(client, options), client.broker);
      return { ...harness, failNextPublish: async () => client.failNext() };
    },
    (h) => h.teardown(),
  );
  return { passed: passed.includes("broker-failure"), message: String((errors["broker-failure"] as Error)?.message) };
}

describe("the kit catches broken publishers (issue 22 rules)", () => {
  it("a publisher that holds a key's run back after permanent failures only fails key-runs-transient", async () => {
    const inner = new MemoryPublisher();
    const permanentOnly: OutboxPublisher = {
      async publish(entries) {
        const refused = new Set<string | null>();
        const outcomes: PublishOutcome[] = [];
        for (const entry of entries) {
          if (entry.key !== null && refused.has(entry.key)) outcomes.push(heldBack(entry));
          else if (entry.payload.byteLength === 2_000) {
            refused.add(entry.key);
            outcomes.push(permanentFailure(new Error("too large")));
          } else if (entry.payload.byteLength === 1_500) outcomes.push(transientFailure(new Error("queue full")));
          else outcomes.push(...(await inner.publish([entry])));
        }
        return outcomes;
      },
    };
    const { failed } = await runChecks(
      publisherChecks,
      async () => ({
        ...(await memoryHarness(permanentOnly, inner)),
        transientFailure: async (topic: string) => ({ topic, key: null, payload: new Uint8Array(1_500) }),
      }),
      (h) => h.teardown(),
    );
    expect(failed).toContain("key-runs-transient");
    expect(failed).not.toContain("key-runs");
  });

  it("a publisher that reports a connection lost mid-publish as permanent fails broker-failure", async () => {
    expect(await brokerFailureResult({ onLoss: "transient", resumes: true })).toEqual({
      passed: true,
      message: "undefined",
    });
    const harsh = await brokerFailureResult({ onLoss: "permanent", resumes: true });
    expect(harsh.passed).toBe(false);
    expect(harsh.message).toContain("never permanent");
  });

  it("a publisher that never resumes an ordering key paused by a failed send fails broker-failure", async () => {
    const stuck = await brokerFailureResult({ onLoss: "transient", resumes: false });
    expect(stuck.passed).toBe(false);
    expect(stuck.message).toContain("must be resumed");
  });

  it("a publisher that turns an empty-string key into null fails round-trip-edges", async () => {
    const inner = new MemoryPublisher();
    const nullsKeys: OutboxPublisher = {
      publish: (entries, options) =>
        inner.publish(
          entries.map((e) => ({ ...e, key: e.key || null })),
          options,
        ),
    };
    const { failed, errors } = await runChecks(
      publisherChecks,
      () => memoryHarness(nullsKeys, inner),
      (h) => h.teardown(),
    );
    expect(failed).toContain("round-trip-edges");
    expect(failed).not.toContain("round-trip");
    expect(String((errors["round-trip-edges"] as Error).message)).toContain('"" is not null');
  });
});

// Issue 22: the relay's own rules, checked for any relay factory.

const newRelayRules = [
  "max-in-flight",
  "failed-run-released",
  "poison-guard",
  "exhausted-head-holds-run",
  "abort-before-lease-end",
] as const;

const relayRuleResults = relayRuleRunner(newRelayRules);

describe("the kit catches broken relays (issue 22 rules)", () => {
  it("OutboxRelay passes the relay's own rules", () => expectRelayPasses(newRelayRules));

  it("a relay that claims past maxInFlightBatches fails max-in-flight", async () => {
    const greedy = bentRelay((options) => ({ ...options, maxInFlightBatches: (options.maxInFlightBatches ?? 2) * 4 }));
    expect((await relayRuleResults(greedy)).failed).toEqual(["max-in-flight"]);
  });

  it("a relay that claims ahead (leases more batches than it publishes) fails max-in-flight", async () => {
    const prefetching = bentRelay((options) => {
      const store = options.store;
      return {
        ...options,
        store: wrapStore(store, {
          // Claims a second batch "for later" with every claim, and leaves it leased.
          claim: async (request) => {
            const entries = await store.claim(request);
            await store.claim({ ...request, claimer: `${request.claimer}-ahead` });
            return entries;
          },
        }),
      };
    });
    expect((await relayRuleResults(prefetching)).failed).toContain("max-in-flight");
  });

  it("a relay that retries the rest of a failed run with an attempt counted fails failed-run-released", async () => {
    const retriesRest = releaseRetriedRelay("held back", 0);
    expect((await relayRuleResults(retriesRest)).failed).toContain("failed-run-released");
  });

  it("a relay that leaves the rest of a failed run leased fails failed-run-released", async () => {
    const leavesLeased = bentRelay((options) => ({
      ...options,
      store: wrapStore(options.store, { release: async () => {} }),
    }));
    expect((await relayRuleResults(leavesLeased)).failed).toContain("failed-run-released");
  });

  it("a poison guard off by one (either way) or missing fails poison-guard", async () => {
    for (const shift of [1, -1, 1_000]) {
      const shifted = bentRelay((options) => ({
        ...options,
        retry: { ...options.retry, maxAttempts: (options.retry?.maxAttempts ?? 10) + shift },
      }));
      expect((await relayRuleResults(shifted)).failed, `poison guard shifted by ${shift}`).toContain("poison-guard");
    }
  });

  it("a relay whose poison guard lets the rest of the run through fails exhausted-head-holds-run", async () => {
    // Dead-letters exhausted entries as they are claimed, and hands the rest of their run on.
    const leaky = bentRelay((options) => {
      const store = options.store;
      const maxAttempts = options.retry?.maxAttempts ?? 10;
      return {
        ...options,
        store: wrapStore(store, {
          claim: async (request) => {
            const entries = await store.claim(request);
            const exhausted = entries.filter((e) => e.attempts > maxAttempts);
            if (exhausted.length > 0) {
              await store.deadLetter(
                exhausted.map((e) => ({ id: e.id, error: "poison" })),
                { claimer: request.claimer, fence: request.fence },
              );
            }
            return entries.filter((e) => !exhausted.includes(e));
          },
        }),
      };
    });
    expect((await relayRuleResults(leaky)).failed).toEqual(["exhausted-head-holds-run"]);
  });

  it("a relay whose publish is aborted only when the lease ends fails abort-before-lease-end", async () => {
    const late = timerAbortedRelay((leaseMs) => leaseMs, new Error("lease ended"));
    expect((await relayRuleResults(late)).failed).toEqual(["abort-before-lease-end"]);
  });
});

describe("the kit catches broken locks (issue 22 rules)", () => {
  it("the reference lock passes every lock check, with a 1 s and a 4 s TTL", async () => {
    expect(await failingLockChecks(() => ({}))).toEqual([]);
    expect(await failingLockChecks(() => ({}), 4_000)).toEqual([]);
  });

  it("a lock that lapses at half its TTL fails expiry, also with a 4 s TTL", async () => {
    for (const ttlMs of [1_000, 4_000]) {
      const failed = await failingLockChecks(
        (inner) => ({ tryAcquire: (name, holder, ttl) => inner.tryAcquire(name, holder, ttl / 2) }),
        ttlMs,
      );
      expect(failed, `TTL ${ttlMs} ms`).toContain("expiry");
    }
  });

  it("a lock whose renewal extends by less than the TTL fails renew-extends", async () => {
    for (const share of [0.5, 0.8]) {
      const failed = await failingLockChecks((inner) => ({
        renew: (name, holder, ttl) => inner.renew(name, holder, ttl * share),
      }));
      expect(failed, `renewal by ${share} of the TTL`).toContain("renew-extends");
    }
  });

  it("a session-bound lock that trusts its session, not the server, fails lock-gone-session-lives", async () => {
    const clock = new ManualClock();
    const sessionBound = (trustSession: boolean) => async (): Promise<LockHarness & LockContextExtras> => {
      const inner = new MemoryLockBackend({ clock });
      // The "session": what this client took and has not released; ended only by expire().
      const taken = new Set<string>();
      const backend: LockBackend = {
        capabilities: { tokensSurviveRestart: true, sessionBound: true },
        async tryAcquire(name, holder, ttl) {
          const token = await inner.tryAcquire(name, holder, ttl);
          if (token !== null) taken.add(`${name}/${holder}`);
          return token;
        },
        async renew(name, holder, ttl) {
          checkLockCall(name, holder, ttl);
          if (!taken.has(`${name}/${holder}`)) return false;
          return trustSession ? true : inner.renew(name, holder, ttl);
        },
        async release(name, holder) {
          taken.delete(`${name}/${holder}`);
          return inner.release(name, holder);
        },
      };
      return {
        backend,
        ttlMs: 1_000,
        allowServerRestarts: false,
        elapse: async (ms) => clock.advance(ms),
        expire: async () => {
          taken.clear();
          inner.restart();
        },
        // The lock goes (a pooler's DISCARD ALL); the session stays.
        dropHolding: async () => inner.restart(),
        teardown: () => inner.close(),
      };
    };
    const only = { "lock-gone-session-lives": lockChecks["lock-gone-session-lives"] };
    const sound = await runChecks(only, sessionBound(false), (h) => h.teardown());
    expect(sound.passed).toEqual(["lock-gone-session-lives"]);
    const trusting = await runChecks(lockChecks, sessionBound(true), (h) => h.teardown());
    expect(trusting.failed).toEqual(["lock-gone-session-lives"]);
  });

  it("a lock whose tokens come from the server's clock fails tokens-clock-step-back", async () => {
    let counter = 0n;
    const failed = await failingLockChecks((inner, clock) => ({
      // Time, then a counter for calls within one millisecond: increasing, until the clock steps back.
      tryAcquire: async (name, holder, ttl) =>
        (await inner.tryAcquire(name, holder, ttl)) === null
          ? null
          : BigInt(clock.now()) * 1_000n + (counter++ % 1_000n),
    }));
    expect(failed).toEqual(["tokens-clock-step-back"]);
  });
});

describe("the kit uses peer() where the harness has it", () => {
  it("a store that keeps the newest fencing token in instance memory fails fencing across peers", async () => {
    // Each instance checks tokens against what it has seen itself; the rows are shared.
    const perInstance =
      (withPeer: boolean) =>
      async (clock: ManualClock): Promise<StoreHarness<Tx>> => {
        const inner = new MemoryStore({ clock });
        const instance = (): OutboxStore<Tx> => {
          const newest = new Map<string, bigint>();
          const check = (fence: { lock: string; token: bigint } | undefined) => {
            if (!fence) return;
            const seen = newest.get(fence.lock);
            if (seen !== undefined && fence.token < seen) {
              throw new OutboxError(OutboxErrorCode.Fenced, "stale token", {
                details: { lock: fence.lock, token: String(fence.token), newest: String(seen) },
              });
            }
            newest.set(fence.lock, fence.token);
          };
          return wrapStore(inner, {
            claim: async (request) => {
              check(request.fence);
              return inner.claim({ ...request, fence: undefined });
            },
            ack: async (ids, context) => {
              check(context.fence);
              return inner.ack(ids, { claimer: context.claimer });
            },
            retry: async (items, context) => {
              check(context.fence);
              return inner.retry(items, { claimer: context.claimer });
            },
          });
        };
        return {
          store: instance(),
          clock,
          transaction: (work) => inner.transaction(work),
          ...(withPeer ? { peer: async () => instance() } : {}),
          teardown: () => inner.close(),
        };
      };
    // On one instance the bug cannot show; across two it does.
    expect(await runStoreCheck(perInstance(false), "fencing")).toEqual({ passed: true, message: "" });
    expect((await runStoreCheck(perInstance(true), "fencing")).passed).toBe(false);
  });
});
