import {
  type ListDeadOptions,
  type ManualClock,
  type OutboxEntry,
  OutboxError,
  OutboxErrorCode,
  type OutboxMessage,
  type OutboxStore,
  type SettleContext,
} from "@outbox/core";
import { MemoryStore, type MemoryTransaction } from "@outbox/memory";
import { expect } from "vitest";
import { type Check, registerSuite, type SkipReasons } from "./suite.js";
import {
  awkwardPayloads,
  bytesEqual,
  claimAndAckAll,
  deferred,
  expectCode,
  keyOrderViolations,
  text,
  uniqueName,
} from "./util.js";

export interface StoreHarness<Tx> {
  /** A store created with `clock` and its own fresh namespace (table, collection, schema...). */
  readonly store: OutboxStore<Tx>;
  /** Runs `work` in a real transaction of the backend: commit on resolve, rollback on reject. */
  transaction<T>(work: (tx: Tx) => Promise<T>): Promise<T>;
  /** The clock the store was created with. */
  readonly clock: ManualClock;
  /**
   * Optional: a second, independent store instance on the same namespace and clock (another
   * relay's store: nothing of the store's own state shared in memory; sharing the driver's pool or
   * client is fine), closed by `teardown`. `give-back-attempts` and `claim-exclusive` race claims
   * across instances, `fencing` shows the newer token through it, `key-runs` claims the key's
   * successors through it; without it all of that happens on one instance.
   */
  peer?(): Promise<OutboxStore<Tx>>;
  /** Drops the namespace and closes clients. */
  teardown(): Promise<void>;
}

export interface StoreConformanceOptions<Tx> {
  name: string;
  /** Builds a store on a fresh namespace, driven by the given manual clock. */
  create(clock: ManualClock): Promise<StoreHarness<Tx>>;
  skip?: SkipReasons<StoreCheckId>;
  /** Time per check, harness setup included. Default 60 s; a check past it fails, named. */
  timeoutMs?: number;
}

type Harness = StoreHarness<unknown>;

const seqHeader = "x-conformance-seq";

function message(topic: string, seq: number, key: string | null = null): OutboxMessage {
  return { topic, key, payload: `payload-${seq}`, headers: { [seqHeader]: String(seq) } };
}

const seqOf = (entry: OutboxEntry): number => Number(entry.headers[seqHeader]);

async function enqueue(h: Harness, messages: OutboxMessage | OutboxMessage[]): Promise<string[]> {
  return h.transaction((tx) => h.store.enqueue(tx, messages));
}

/** Resolves like `work`, or rejects with `message` when it takes longer than `ms`. */
async function within<T>(work: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      work,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(message)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

const idsOf = (entries: readonly OutboxEntry[]): string[] => entries.map((e) => e.id);

const ctx = (claimer: string, fence?: SettleContext["fence"]): SettleContext => ({ claimer, fence });

export const storeChecks = {
  "round-trip": {
    title: "payload bytes, headers, key and idempotency key come back exactly",
    async run(h) {
      const topic = uniqueName("rt");
      const payloads = awkwardPayloads(1024 * 1024);
      const headers = { "content-type": "application/octet-stream", "x-émoji": "🚀", empty: "" };
      const ids = await enqueue(
        h,
        payloads.map((p, i) => ({ topic, key: `k${i}`, payload: p.payload, headers, idempotencyKey: `idem-${i}` })),
      );
      const [defaultId] = await enqueue(h, { topic, payload: "no explicit idempotency key" });
      expect(ids, "enqueue must return one id per message, in order").toHaveLength(payloads.length);
      expect(new Set([...ids, defaultId]).size, "enqueue must return a distinct id for every entry").toBe(
        payloads.length + 1,
      );
      const claimed = await h.store.claim({ claimer: "c", limit: 100, leaseMs: 1000 });
      expect(
        claimed.map((e) => e.id),
        "claim must return the entries under the ids enqueue returned, in enqueue order",
      ).toEqual([...ids, defaultId]);
      payloads.forEach((p, i) => {
        const entry = claimed[i] as OutboxEntry;
        expect(entry.payload, "a claimed entry's payload must be a Uint8Array").toBeInstanceOf(Uint8Array);
        expect(
          bytesEqual(entry.payload, p.bytes),
          `the store must keep payload bytes exactly ("${p.name}" altered)`,
        ).toBe(true);
        expect(entry.headers, "the store must keep headers exactly (unicode, empty values)").toEqual(headers);
        expect(entry.key, "the store must keep the entry's key").toBe(`k${i}`);
        expect(entry.topic, "the store must keep the entry's topic").toBe(topic);
        expect(entry.idempotencyKey, "the store must keep an explicit idempotency key").toBe(`idem-${i}`);
        expect(entry.attempts, "a first claim must count attempt 1").toBe(1);
        expect(entry.lastError, "a new entry has no lastError").toBeNull();
        expect(entry.createdAt.getTime(), "createdAt must come from the injected clock").toBe(h.clock.now());
      });
      const last = claimed.at(-1) as OutboxEntry;
      expect(last.idempotencyKey, "without an explicit idempotency key it defaults to the entry id").toBe(defaultId);
      expect(last.key, "a message without a key must come back with key null").toBeNull();
    },
  },
  "invalid-entry": {
    title: "invalid entries are rejected at enqueue with OUTBOX_INVALID_ENTRY and nothing is written",
    async run(h) {
      const bad: unknown[] = [
        { topic: "", payload: "x" },
        { topic: "t", payload: { not: "bytes" } },
        { topic: "t", payload: "x", headers: { h: 1 } },
        { topic: "t", payload: "\ud800" },
        { topic: "t", payload: new Uint8Array(5 * 1024 * 1024) },
      ];
      for (const input of bad) {
        await expectCode(
          enqueue(h, [{ topic: "t", payload: "valid neighbour" }, input as OutboxMessage]),
          OutboxErrorCode.InvalidEntry,
          `enqueue must reject an invalid entry (${JSON.stringify(input).slice(0, 60)}) at once`,
        );
      }
      expect(
        await h.store.claim({ claimer: "c", limit: 10, leaseMs: 1000 }),
        "a rejected enqueue must write nothing, not even its valid neighbours",
      ).toEqual([]);
    },
  },
  "round-trip-edges": {
    title:
      "edge values (empty-string key, unicode key, NUL in header values, empty payload) come back exactly or are refused",
    async run(h) {
      const topic = uniqueName("rte");
      const cases: Array<{ name: string; message: OutboxMessage; bytes: Uint8Array }> = [
        { name: "empty-string key", message: { topic, key: "", payload: "k" }, bytes: text("k") },
        {
          name: "unicode key",
          message: { topic, key: "ключ-日本-🔑", payload: "u" },
          bytes: text("u"),
        },
        {
          name: "NUL in a header value",
          message: { topic, key: "nul", payload: "n", headers: { "x-nul": "a\u0000b", "x-tail-nul": "\u0000" } },
          bytes: text("n"),
        },
        {
          name: "empty payload and binary bytes",
          message: { topic, key: "bin", payload: new Uint8Array(0), headers: { "x-unicode": "日本語 🚀" } },
          bytes: new Uint8Array(0),
        },
        {
          name: "binary payload with NULs",
          message: { topic, key: "bin", payload: new Uint8Array([0, 255, 0, 1, 0xc3, 0x28]) },
          bytes: new Uint8Array([0, 255, 0, 1, 0xc3, 0x28]),
        },
      ];
      for (const { name, message: input, bytes } of cases) {
        const outcome = await enqueue(h, input).then(
          (ids) => ({ ids, error: null as unknown }),
          (error: unknown) => ({ ids: [] as string[], error }),
        );
        if (outcome.error !== null) {
          expect(
            OutboxError.is(outcome.error) ? outcome.error.code : outcome.error,
            `a value the store cannot keep exactly (${name}) must be refused with OUTBOX_INVALID_ENTRY at enqueue, ` +
              "never fail otherwise",
          ).toBe(OutboxErrorCode.InvalidEntry);
          expect(
            await h.store.claim({ claimer: "c", limit: 10, leaseMs: 1_000 }),
            `a refused entry (${name}) must write nothing`,
          ).toEqual([]);
          continue;
        }
        const claimed = await h.store.claim({ claimer: "c", limit: 10, leaseMs: 1_000 });
        expect(idsOf(claimed), `the entry (${name}) must be claimable under its id`).toEqual(outcome.ids);
        const entry = claimed[0] as OutboxEntry;
        expect(entry.key, `the store must keep the key exactly (${name}): not null, not trimmed`).toBe(
          input.key ?? null,
        );
        expect(entry.headers, `the store must keep header values exactly (${name})`).toEqual(input.headers ?? {});
        expect(bytesEqual(entry.payload, bytes), `the store must keep payload bytes exactly (${name})`).toBe(true);
        await h.store.ack(idsOf(claimed), ctx("c"));
      }
    },
  },
  "key-run-gap": {
    title: "a key's run stops at a successor that cannot be claimed yet (delayed, retrying or leased elsewhere)",
    async run(h) {
      const later = new Date(h.clock.now() + 10_000);
      // Delayed: k's second entry is not available until later; the third is.
      const [d1, d2, d3] = await enqueue(h, [
        message("gap", 1, "delayed"),
        { ...message("gap", 2, "delayed"), availableAt: later },
        message("gap", 3, "delayed"),
      ]);
      const [free] = await enqueue(h, message("gap", 4, "free"));
      const first = await h.store.claim({ claimer: "a", limit: 10, leaseMs: 60_000 });
      expect(
        idsOf(first),
        "a key's run ends before its first entry that is not available yet: the entry behind it must wait " +
          "(never e3 before e2), and other keys still go",
      ).toEqual([d1, free]);
      await h.store.ack(idsOf(first), ctx("a"));
      expect(
        await h.store.claim({ claimer: "a", limit: 10, leaseMs: 60_000 }),
        "a key whose head is not available yet yields nothing, not its available successors",
      ).toEqual([]);
      h.clock.advance(10_000);
      const second = await h.store.claim({ claimer: "a", limit: 10, leaseMs: 60_000 });
      expect(idsOf(second), "once available, the key's run resumes at the delayed entry, in order").toEqual([d2, d3]);
      expect(
        second.map((e) => e.attempts),
        "entries passed over by an earlier claim must not have counted an attempt",
      ).toEqual([1, 1]);
      await h.store.ack(idsOf(second), ctx("a"));

      // Retrying: the middle entry of a run waits for its retry; its neighbours are given back.
      const [r1, r2, r3] = await enqueue(h, [
        message("gap", 5, "retry"),
        message("gap", 6, "retry"),
        message("gap", 7, "retry"),
      ]);
      const run = await h.store.claim({ claimer: "a", limit: 10, leaseMs: 60_000 });
      expect(idsOf(run), "a run of available entries is claimed whole").toEqual([r1, r2, r3]);
      await h.store.retry([{ id: r2 as string, error: "x", availableAt: new Date(h.clock.now() + 5_000) }], ctx("a"));
      await h.store.release([r1 as string, r3 as string], ctx("a"));
      expect(
        idsOf(await h.store.claim({ claimer: "b", limit: 10, leaseMs: 60_000 })),
        "a run ends before a successor that waits for its retry: e1 only, never e3 while e2 waits",
      ).toEqual([r1]);
      await h.store.ack([r1 as string], ctx("b"));
      h.clock.advance(5_000);
      const resumed = await h.store.claim({ claimer: "b", limit: 10, leaseMs: 60_000 });
      expect(idsOf(resumed), "after the retry time the run resumes at the retried entry").toEqual([r2, r3]);
      expect(
        resumed.map((e) => e.attempts),
        "the retried entry counts its second attempt; the released one was given back without an attempt",
      ).toEqual([2, 1]);
      await h.store.ack(idsOf(resumed), ctx("b"));

      // Leased elsewhere: the middle entry is still leased to another claimer.
      const [l1, l2, l3] = await enqueue(h, [
        message("gap", 8, "leased"),
        message("gap", 9, "leased"),
        message("gap", 10, "leased"),
      ]);
      const held = await h.store.claim({ claimer: "a", limit: 10, leaseMs: 60_000 });
      expect(idsOf(held), "a run of available entries is claimed whole").toEqual([l1, l2, l3]);
      await h.store.release([l1 as string, l3 as string], ctx("a"));
      const other = await h.store.claim({ claimer: "b", limit: 10, leaseMs: 60_000 });
      expect(
        idsOf(other),
        "a run ends before a successor leased by another claimer: never e3 while e2 is leased",
      ).not.toContain(l3);
      expect(idsOf(other), "a run ends before a successor leased by another claimer: e1 only").toEqual([l1]);
      await h.store.ack([l1 as string], ctx("b"));
      await h.store.ack([l2 as string], ctx("a"));
      const tail = await h.store.claim({ claimer: "b", limit: 10, leaseMs: 60_000 });
      expect(idsOf(tail), "once the leased entry is settled the run goes on").toEqual([l3]);
      expect(tail[0]?.attempts, "an entry passed over behind a leased one must not have counted an attempt").toBe(1);
    },
  },
  "give-back-attempts": {
    title: "entries a claim leased and gave back (a run cut by its limit, a gap or a racing claimer) count no attempt",
    async run(h) {
      // Runs cut by the limit: what is not returned must not have counted an attempt.
      await enqueue(
        h,
        Array.from({ length: 9 }, (_, i) => message("gba", i, i < 6 ? "long" : `short-${i}`)),
      );
      const cut = await h.store.claim({ claimer: "a", limit: 2, leaseMs: 60_000 });
      expect(cut.length, "a claim returns at most its limit").toBeLessThanOrEqual(2);
      await h.store.ack(idsOf(cut), ctx("a"));
      const returned = new Map<string, number>();
      for (const entry of cut) returned.set(entry.id, 1);
      const rest = await h.store.claim({ claimer: "b", limit: 100, leaseMs: 60_000 });
      for (const entry of rest) {
        expect(
          entry.attempts,
          `entry ${entry.id} was never returned by a claim before, so it must be on attempt 1: successors a ` +
            "claim leased and gave back (its run cut by the limit) must not count an attempt",
        ).toBe(1);
      }
      await h.store.ack(idsOf(rest), ctx("b"));

      // Racing claimers over hot keys: every attempt an entry shows must be a claim that returned it.
      const claimers = h.peer
        ? [h.store, await h.peer(), h.store, await h.peer()]
        : [h.store, h.store, h.store, h.store];
      const keys = ["h0", "h1", "h2"];
      await enqueue(
        h,
        Array.from({ length: 60 }, (_, i) => message("gba-race", i, keys[i % keys.length] as string)),
      );
      let settled = 0;
      for (let round = 0; round < 40 && settled < 60; round++) {
        const batches = await Promise.all(
          claimers.map((store, i) => store.claim({ claimer: `racer-${i}`, limit: 3, leaseMs: 1_000 })),
        );
        for (const [i, batch] of batches.entries()) {
          for (const entry of batch) {
            const count = (returned.get(entry.id) ?? 0) + 1;
            returned.set(entry.id, count);
            expect(
              entry.attempts,
              `entry ${entry.id} was returned by ${count} claim(s) but shows ${entry.attempts} attempts: entries a ` +
                "claim leased and gave back (a run cut where a racing claimer got an entry) must not count an attempt",
            ).toBe(count);
          }
          // Racer 0 acks; the others let their leases run out, so entries come back and race again.
          if (i === 0 && batch.length > 0) {
            await h.store.ack(idsOf(batch), ctx("racer-0"));
            settled += batch.length;
          }
        }
        h.clock.advance(1_000);
      }
      const left = await claimAndAckAll(h.store as OutboxStore<never>, ctx("z"));
      for (const entry of left) {
        expect(
          entry.attempts,
          `entry ${entry.id} shows ${entry.attempts} attempts but was returned by ${returned.get(entry.id) ?? 0} ` +
            "claim(s) before: given-back entries must not count an attempt",
        ).toBe((returned.get(entry.id) ?? 0) + 1);
      }
    },
  },
  "rollback-leaves-nothing": {
    title: "enqueue inside a transaction that rolls back leaves nothing",
    requires: (h) => (h.store.capabilities.transactions ? null : "store declares transactions: false"),
    async run(h) {
      const failure = new Error("business rule failed");
      await expect(
        h.transaction(async (tx) => {
          await h.store.enqueue(tx, message("rollback", 1));
          throw failure;
        }),
      ).rejects.toBe(failure);
      expect(
        await h.store.claim({ claimer: "c", limit: 10, leaseMs: 1000 }),
        "an entry enqueued in a rolled-back transaction must not be claimable",
      ).toEqual([]);
      expect((await h.store.stats()).pending, "a rolled-back enqueue must not count as pending").toBe(0);
    },
  },
  "claim-order-and-limit": {
    title: "claims return the oldest available entries first, up to the limit, with the ids enqueue returned",
    async run(h) {
      // 25 in one call: ids past 9 catch a store that orders ids as text.
      const ids = await enqueue(
        h,
        Array.from({ length: 25 }, (_, i) => message("order", i)),
      );
      const first = await h.store.claim({ claimer: "c", limit: 4, leaseMs: 1000 });
      const second = await h.store.claim({ claimer: "c", limit: 100, leaseMs: 1000 });
      expect(first.map(seqOf), "a claim must return the oldest entries first, no more than its limit").toEqual([
        0, 1, 2, 3,
      ]);
      expect(second.map(seqOf), "claims must continue in id order (numeric, not text: 10 comes after 9)").toEqual(
        Array.from({ length: 21 }, (_, i) => i + 4),
      );
      expect(
        [...first, ...second].map((e) => e.id),
        "claimed ids must be the ids enqueue returned",
      ).toEqual(ids);
    },
  },
  "claim-exclusive": {
    title: "concurrent claimers never receive the same entry within a lease",
    async run(h) {
      await enqueue(
        h,
        Array.from({ length: 200 }, (_, i) => message("excl", i)),
      );
      const claimers = Array.from({ length: 8 }, (_, i) => `claimer-${i}`);
      // Across instances where the harness has peer(): other relays' stores.
      const stores = h.peer ? [h.store, await h.peer(), await h.peer()] : [h.store];
      const seen = new Map<string, string>();
      for (let round = 0; round < 10; round++) {
        const batches = await Promise.all(
          claimers.map((claimer, i) =>
            (stores[i % stores.length] as OutboxStore<unknown>).claim({ claimer, limit: 7, leaseMs: 60_000 }),
          ),
        );
        batches.forEach((batch, i) => {
          for (const entry of batch) {
            expect(
              seen.get(entry.id),
              `concurrent claims must never hand out one entry twice within its lease (entry ${entry.id})`,
            ).toBeUndefined();
            seen.set(entry.id, claimers[i] as string);
          }
        });
      }
      expect(seen.size, "concurrent claimers together must get every entry").toBe(200);
    },
  },
  "lease-expiry": {
    title: "entries become claimable again when their lease ends, with the attempt counted",
    async run(h) {
      await enqueue(h, message("lease", 1));
      const [first] = await h.store.claim({ claimer: "a", limit: 1, leaseMs: 5_000 });
      expect(first?.attempts, "a first claim must count attempt 1").toBe(1);
      h.clock.advance(4_999);
      expect(
        await h.store.claim({ claimer: "b", limit: 1, leaseMs: 5_000 }),
        "a leased entry must stay invisible to other claimers until its lease ends (claim must use the injected clock)",
      ).toEqual([]);
      h.clock.advance(1);
      const [again] = await h.store.claim({ claimer: "b", limit: 1, leaseMs: 5_000 });
      expect(again?.id, "an entry whose lease ended must be claimable again (claim must use the injected clock)").toBe(
        first?.id,
      );
      expect(again?.attempts, "every claim must count an attempt").toBe(2);
    },
  },
  "ack-idempotent": {
    title: "ack is idempotent and acked entries are never claimed again",
    async run(h) {
      const ids = await enqueue(h, [message("ack", 1), message("ack", 2)]);
      const claimed = await h.store.claim({ claimer: "a", limit: 10, leaseMs: 1_000 });
      expect(claimed, "both entries must be claimable").toHaveLength(2);
      await h.store.ack(ids, ctx("a"));
      await h.store.ack(ids, ctx("a"));
      await h.store.ack(["999999999"], ctx("a"));
      h.clock.advance(10_000);
      expect(
        await h.store.claim({ claimer: "b", limit: 10, leaseMs: 1_000 }),
        "an acked entry must never be claimed again, also after its lease would have ended",
      ).toEqual([]);
      expect((await h.store.stats()).pending, "acked entries must not count as pending").toBe(0);
    },
  },
  fencing: {
    title: "a claim or ack with a token older than the newest seen fails with OUTBOX_FENCED",
    async run(h) {
      const lock = uniqueName("leader");
      await enqueue(h, [message("fence", 1), message("fence", 2)]);
      const old = { lock, token: 5n };
      const [entry] = await h.store.claim({ claimer: "old", limit: 1, leaseMs: 1_000, fence: old });
      expect(entry, "a fenced claim with the first token must succeed").toBeDefined();
      // A newer leader shows up with a higher token (through another instance where the harness has
      // peer(): the newest token is the store's, not one instance's memory).
      const newLeader = h.peer ? await h.peer() : h.store;
      await newLeader.claim({ claimer: "new", limit: 1, leaseMs: 1_000, fence: { lock, token: 6n } });
      await expectCode(
        h.store.ack([(entry as OutboxEntry).id], ctx("old", old)),
        OutboxErrorCode.Fenced,
        "an ack with a token older than the newest seen must be rejected",
      );
      await expectCode(
        h.store.claim({ claimer: "old", limit: 1, leaseMs: 1_000, fence: old }),
        OutboxErrorCode.Fenced,
        "a claim with a token older than the newest seen must be rejected",
      );
      await expectCode(
        h.store.retry(
          [{ id: (entry as OutboxEntry).id, error: "x", availableAt: new Date(h.clock.now()) }],
          ctx("old", old),
        ),
        OutboxErrorCode.Fenced,
        "a retry with a token older than the newest seen must be rejected",
      );
      expect((await h.store.stats()).pending, "a rejected (fenced) ack must change nothing").toBe(2);
      // Equal or higher tokens pass; other lock names are independent.
      await h.store.ack([(entry as OutboxEntry).id], ctx("new", { lock, token: 6n }));
      await h.store.claim({ claimer: "x", limit: 1, leaseMs: 1, fence: { lock: `${lock}-other`, token: 1n } });
      expect(
        (await h.store.stats()).pending,
        "the newest token must pass, and a token of another lock name is independent",
      ).toBe(1);
    },
  },
  "retry-schedule": {
    title: "retry records the error and hides the entry until its next attempt time",
    async run(h) {
      await enqueue(h, message("retry", 1));
      const [entry] = await h.store.claim({ claimer: "a", limit: 1, leaseMs: 60_000 });
      const availableAt = new Date(h.clock.now() + 5_000);
      await h.store.retry([{ id: (entry as OutboxEntry).id, error: "broker down", availableAt }], ctx("a"));
      h.clock.advance(4_999);
      expect(
        await h.store.claim({ claimer: "a", limit: 1, leaseMs: 60_000 }),
        "a retried entry must stay hidden until its availableAt (claim must use the injected clock)",
      ).toEqual([]);
      h.clock.advance(1);
      const [again] = await h.store.claim({ claimer: "a", limit: 1, leaseMs: 60_000 });
      expect(again?.id, "a retried entry must be claimable at its availableAt").toBe(entry?.id);
      expect(again?.attempts, "the claim after a retry must count the next attempt").toBe(2);
      expect(again?.lastError, "retry must record the error as lastError").toBe("broker down");
      expect(again?.availableAt.getTime(), "retry must store availableAt exactly").toBe(availableAt.getTime());
    },
  },
  "settle-only-own": {
    title: "retry, dead-letter and release act only on the claimer's own entries",
    async run(h) {
      await enqueue(h, message("own", 1));
      const [entry] = await h.store.claim({ claimer: "a", limit: 1, leaseMs: 60_000 });
      const id = (entry as OutboxEntry).id;
      await h.store.retry([{ id, error: "x", availableAt: new Date(h.clock.now()) }], ctx("b"));
      await h.store.deadLetter([{ id, error: "x" }], ctx("b"));
      await h.store.release([id], ctx("b"));
      expect(
        await h.store.claim({ claimer: "b", limit: 1, leaseMs: 60_000 }),
        "retry and release by another claimer must not touch an entry it does not hold",
      ).toEqual([]);
      expect(
        (await h.store.stats()).dead,
        "deadLetter by another claimer must not touch an entry it does not hold",
      ).toBe(0);
      await h.store.release([id], ctx("a"));
      const [again] = await h.store.claim({ claimer: "b", limit: 1, leaseMs: 60_000 });
      expect(again?.id, "release by the holder must make the entry claimable at once").toBe(id);
      expect(again?.attempts, "release must not count an attempt").toBe(1);
    },
  },
  "release-claimer": {
    title: "releaseClaimer gives back exactly what one claimer still holds, without counting an attempt",
    requires: (h) => (h.store.releaseClaimer ? null : "store has no optional releaseClaimer()"),
    async run(h) {
      const releaseClaimer = h.store.releaseClaimer?.bind(h.store) as NonNullable<OutboxStore["releaseClaimer"]>;
      const lock = uniqueName("leader");
      const fence = { lock, token: 3n };
      const [k1, k2, keyless, j1] = await enqueue(h, [
        message("rc", 1, "k"),
        message("rc", 2, "k"),
        message("rc", 3),
        message("rc", 4, "j"),
      ]);
      // A claim whose reply was lost (r#1), and another claimer's entry that must stay leased.
      const lost = await h.store.claim({ claimer: "r#1", limit: 2, leaseMs: 60_000, fence });
      expect(idsOf(lost), "a claim with limit 2 must return the oldest run").toEqual([k1, k2]);
      const held = await h.store.claim({ claimer: "b", limit: 1, leaseMs: 60_000, fence });
      expect(idsOf(held), "the next claim must lease the oldest unleased entry").toEqual([keyless]);
      expect(await releaseClaimer(ctx("r#2", fence)), "a claimer that holds nothing releases nothing").toBe(0);
      await expectCode(
        releaseClaimer(ctx("r#1", { lock, token: 2n })),
        OutboxErrorCode.Fenced,
        "releaseClaimer with an older token must be rejected",
      );
      expect(
        await releaseClaimer(ctx("r#1", fence)),
        "releaseClaimer must give back every entry the claimer still holds, and say how many",
      ).toBe(2);
      const again = await h.store.claim({ claimer: "c", limit: 10, leaseMs: 60_000, fence });
      expect(
        idsOf(again),
        "the released run must be claimable at once, in order; another claimer's entry must stay leased",
      ).toEqual([k1, k2, j1]);
      expect(
        again.map((entry) => entry.attempts),
        "releaseClaimer must not count an attempt",
      ).toEqual([1, 1, 1]);
    },
  },
  "drop-dead": {
    title: "dropDead deletes dead entries only, and says how many",
    requires: (h) => (h.store.dropDead ? null : "store has no optional dropDead()"),
    async run(h) {
      const ids = await enqueue(h, [message("drop", 1), message("drop", 2)]);
      const claimed = await h.store.claim({ claimer: "a", limit: 10, leaseMs: 60_000 });
      expect(claimed).toHaveLength(2);
      await h.store.deadLetter([{ id: ids[0] as string, error: "x" }], ctx("a"));
      const drop = h.store.dropDead?.bind(h.store) as NonNullable<OutboxStore["dropDead"]>;
      expect(await drop(ids), "dropDead must delete only dead entries and return how many it deleted").toBe(1);
      expect(await h.store.listDead(), "a dropped entry must be gone").toEqual([]);
      expect((await h.store.stats()).pending, "a pending entry must survive dropDead").toBe(1);
      expect(await drop(ids), "dropping again must delete nothing").toBe(0);
    },
  },
  "pending-summary": {
    title: "pendingSummary counts retry-waiting entries and hot keys among the oldest pending entries",
    requires: (h) => (h.store.pendingSummary ? null : "store has no optional pendingSummary()"),
    async run(h) {
      const summary = h.store.pendingSummary?.bind(h.store) as NonNullable<OutboxStore["pendingSummary"]>;
      expect(await summary(), "an empty outbox has nothing to summarise").toEqual({
        scanned: 0,
        retryWaiting: 0,
        hotKeys: [],
        blockedKeys: [],
      });
      const topic = uniqueName("summary");
      const [hot1, hot2, warm1, hot3, warm2, keyless, cold, gone, retry] = (await enqueue(h, [
        message(topic, 1, "hot"),
        message(topic, 2, "hot"),
        message(topic, 3, "warm"),
        message(topic, 4, "hot"),
        message(topic, 5, "warm"),
        message(topic, 6),
        message(topic, 7, "cold"),
        message(topic, 8, "gone"),
        message(topic, 9, "retry"),
      ])) as string[];
      const claimed = await h.store.claim({ claimer: "a", limit: 100, leaseMs: 60_000 });
      expect(idsOf(claimed).sort(), "every entry is claimable").toEqual(
        [hot1, hot2, warm1, hot3, warm2, keyless, cold, gone, retry].sort(),
      );
      // Settled entries leave the pending ones; a retry waits; the warm run stays leased (in flight).
      await h.store.deadLetter([{ id: cold as string, error: "x" }], ctx("a"));
      await h.store.ack([gone as string], ctx("a"));
      const later = new Date(h.clock.now() + 60_000);
      await h.store.retry([{ id: retry as string, error: "later", availableAt: later }], ctx("a"));
      await h.store.release([hot1, hot2, hot3, keyless] as string[], ctx("a"));
      expect(await summary(), "pending entries only, keyless ones in the scan but not in the keys").toEqual({
        scanned: 7,
        retryWaiting: 1,
        hotKeys: [
          { key: "hot", pending: 3 },
          { key: "warm", pending: 2 },
          { key: "retry", pending: 1 },
        ],
        blockedKeys: [
          {
            key: "retry",
            pending: 1,
            entryId: retry,
            attempts: 1,
            lastError: "later",
            availableAt: later,
          },
        ],
      });
      expect(await summary({ hotKeys: 2 }), "hotKeys bounds the keys returned, the most pending first").toMatchObject({
        scanned: 7,
        hotKeys: [
          { key: "hot", pending: 3 },
          { key: "warm", pending: 2 },
        ],
      });
      expect(
        await summary({ scanLimit: 3 }),
        "scanLimit bounds the scan to the oldest pending entries, in id order",
      ).toEqual({
        scanned: 3,
        retryWaiting: 0,
        hotKeys: [
          { key: "hot", pending: 2 },
          { key: "warm", pending: 1 },
        ],
        blockedKeys: [],
      });
      h.clock.advance(60_001);
      expect((await summary()).retryWaiting, "an entry past its availableAt no longer waits").toBe(0);
      await expectCode(summary({ scanLimit: 0 }), OutboxErrorCode.InvalidOptions, "a scanLimit of 0 is refused");
    },
  },
  "pending-summary-blocked-keys": {
    title: "pendingSummary names the keys blocked behind a failing entry: its first pending entry failed and waits",
    requires: (h) => (h.store.pendingSummary ? null : "store has no optional pendingSummary()"),
    async run(h) {
      const summary = h.store.pendingSummary?.bind(h.store) as NonNullable<OutboxStore["pendingSummary"]>;
      const topic = uniqueName("blocked");
      // First the heads of four keys, each claimed once: three fail, one is published.
      const [stuck1, far1, busy1, late1] = (await enqueue(h, [
        message(topic, 1, "stuck"),
        message(topic, 2, "far"),
        message(topic, 3, "busy"),
        message(topic, 4, "late"),
      ])) as string[];
      const first = await h.store.claim({ claimer: "a", limit: 100, leaseMs: 60_000 });
      expect(idsOf(first).sort(), "the four heads are claimable").toEqual([stuck1, far1, busy1, late1].sort());
      const later = new Date(h.clock.now() + 30_000);
      await h.store.retry(
        [
          { id: stuck1 as string, error: "broker says no", availableAt: later },
          { id: far1 as string, error: "far away", availableAt: later },
          { id: busy1 as string, error: "first failure", availableAt: new Date(h.clock.now() + 1_000) },
        ],
        ctx("a"),
      );
      await h.store.ack([late1 as string], ctx("a"));
      // Then the entries behind them, and a key whose head waits for a start time, never failed.
      const [, , late2, , busy2] = (await enqueue(h, [
        message(topic, 5, "stuck"),
        message(topic, 6, "stuck"),
        message(topic, 7, "late"),
        { ...message(topic, 8, "delayed"), availableAt: new Date(h.clock.now() + 60_000) },
        message(topic, 9, "busy"),
        message(topic, 10, "far"),
      ])) as string[];
      // late's new head is the only claimable entry; it fails too.
      const second = await h.store.claim({ claimer: "b", limit: 100, leaseMs: 60_000 });
      expect(idsOf(second), "only late's second entry is claimable").toEqual([late2]);
      await h.store.retry([{ id: late2 as string, error: "also no", availableAt: later }], ctx("b"));
      // busy's failed head comes back and is leased again: not blocked while it is being tried.
      h.clock.advance(1_000);
      const third = await h.store.claim({ claimer: "c", limit: 100, leaseMs: 60_000 });
      expect(idsOf(third)[0], "busy's failed head is claimable again").toBe(busy1);
      expect(
        idsOf(third).every((id) => id === busy1 || id === busy2),
        "and nothing of the waiting keys",
      ).toBe(true);
      const { blockedKeys } = await summary();
      expect(
        blockedKeys,
        "a key is blocked when its first pending entry failed and waits (not leased, not a plain delayed start), most pending first",
      ).toEqual([
        { key: "stuck", pending: 3, entryId: stuck1, attempts: 1, lastError: "broker says no", availableAt: later },
        { key: "far", pending: 2, entryId: far1, attempts: 1, lastError: "far away", availableAt: later },
        { key: "late", pending: 1, entryId: late2, attempts: 1, lastError: "also no", availableAt: later },
      ]);
      expect(
        (await summary({ blockedKeys: 1 })).blockedKeys.map((blocked) => blocked.key),
        "blockedKeys bounds the keys returned",
      ).toEqual(["stuck"]);
      await expectCode(summary({ blockedKeys: 0 }), OutboxErrorCode.InvalidOptions, "a blockedKeys of 0 is refused");
    },
  },
  "dead-letters": {
    title: "dead-lettered entries are listed, never claimed, and can be requeued",
    async run(h) {
      const [id] = await enqueue(h, message("dead", 1, "k"));
      await enqueue(h, message("dead", 2, "k"));
      const [entry] = await h.store.claim({ claimer: "a", limit: 1, leaseMs: 60_000 });
      expect(entry?.id, "a claim with limit 1 returns the key's head").toBe(id);
      await h.store.deadLetter([{ id: id as string, error: "unroutable" }], ctx("a"));
      const dead = await h.store.listDead();
      expect(
        dead.map((e) => e.id),
        "listDead must list the dead-lettered entry",
      ).toEqual([id]);
      expect(dead[0]?.lastError, "deadLetter must record the error as lastError").toBe("unroutable");
      expect((await h.store.stats()).dead, "stats().dead must count dead entries").toBe(1);
      const next = await h.store.claim({ claimer: "a", limit: 10, leaseMs: 60_000 });
      expect(next.map(seqOf), "a dead entry must no longer hold back its key's later entries").toEqual([2]);
      await h.store.ack(
        next.map((e) => e.id),
        ctx("a"),
      );
      expect(await h.store.requeueDead([id as string]), "requeueDead must return how many entries moved").toBe(1);
      const [requeued] = await h.store.claim({ claimer: "a", limit: 10, leaseMs: 60_000 });
      expect(requeued?.id, "a requeued entry must be claimable again").toBe(id);
      expect(requeued?.attempts, "requeueDead must reset the attempt count").toBe(1);
      expect((await h.store.stats()).dead, "a requeued entry is no longer dead").toBe(0);
    },
  },
  purge: {
    title: "purge removes old published and dead entries only",
    async run(h) {
      const ids = await enqueue(h, [message("purge", 1), message("purge", 2), message("purge", 3)]);
      const claimed = await h.store.claim({ claimer: "a", limit: 2, leaseMs: 60_000 });
      await h.store.ack([claimed[0]?.id as string], ctx("a"));
      await h.store.deadLetter([{ id: claimed[1]?.id as string, error: "x" }], ctx("a"));
      h.clock.advance(60_000);
      await enqueue(h, message("purge", 4));
      const recent = await h.store.claim({ claimer: "a", limit: 2, leaseMs: 60_000 });
      const fresh = recent.find((e) => seqOf(e) === 4) as OutboxEntry;
      await h.store.ack([fresh.id], ctx("a"));
      const purged = await h.store.purge({ olderThan: new Date(h.clock.now() - 1_000), batchSize: 1 });
      expect(purged, "purge must remove the old published and dead entries, across batches, and return the count").toBe(
        2,
      );
      const stats = await h.store.stats();
      expect(stats.dead, "purge must remove old dead entries").toBe(0);
      expect(stats.pending, "purge must never remove pending entries, whatever their age").toBe(1);
      // The pending entry (seq 3) survived, whatever its age.
      await h.store.release(
        recent.map((e) => e.id),
        ctx("a"),
      );
      const left = await claimAndAckAll(h.store as OutboxStore<never>, ctx("b"));
      expect(
        left.map((e) => e.id),
        "purge must never remove pending entries, whatever their age",
      ).toEqual([ids[2]]);
    },
  },
  "key-order": {
    title: "per-key order: a claim returns each key's run in order; a retrying head holds back its own key only",
    async run(h) {
      const keys = ["a", "b", "c", "d"];
      await enqueue(
        h,
        Array.from({ length: 40 }, (_, i) => message("keys", i, keys[i % keys.length] as string)),
      );
      await enqueue(h, [message("keys", 100), message("keys", 101)]);
      const first = await h.store.claim({ claimer: "a", limit: 100, leaseMs: 60_000 });
      expect(first.map(seqOf), "with room for everything, a claim returns every available entry in id order").toEqual([
        ...Array.from({ length: 40 }, (_, i) => i),
        100,
        101,
      ]);
      expect(await h.store.claim({ claimer: "b", limit: 100, leaseMs: 60_000 }), "leased keys yield nothing").toEqual(
        [],
      );
      // Key a's head fails: it waits for its retry, the rest of a's run goes back; other keys are done.
      const runA = first.filter((e) => e.key === "a");
      const headA = runA[0] as OutboxEntry;
      await h.store.retry([{ id: headA.id, error: "x", availableAt: new Date(h.clock.now() + 10_000) }], ctx("a"));
      await h.store.release(
        runA.slice(1).map((e) => e.id),
        ctx("a"),
      );
      await h.store.ack(
        first.filter((e) => e.key !== "a").map((e) => e.id),
        ctx("a"),
      );
      expect(
        await h.store.claim({ claimer: "b", limit: 100, leaseMs: 60_000 }),
        "a key whose head waits for a retry must yield nothing, not its successors",
      ).toEqual([]);
      h.clock.advance(10_000);
      const again = await h.store.claim({ claimer: "b", limit: 100, leaseMs: 60_000 });
      expect(again.map(seqOf), "after the retry time the key's run resumes at its head").toEqual(
        runA.map((e) => seqOf(e)),
      );
      expect(
        again.map((e) => e.attempts),
        "release must not count an attempt",
      ).toEqual(runA.map((_, i) => (i === 0 ? 2 : 1)));
    },
  },
  "key-runs": {
    title: "runs: a claim's entries of a key are a prefix of its pending entries; the next claim continues it",
    async run(h) {
      await enqueue(
        h,
        Array.from({ length: 12 }, (_, i) => message("runs", i, "hot")),
      );
      const first = await h.store.claim({ claimer: "p", limit: 5, leaseMs: 60_000 });
      expect(first.length, "a claim never returns more than its limit").toBeLessThanOrEqual(5);
      expect(first.length, "a claimable key must yield at least its head").toBeGreaterThan(0);
      expect(first.map(seqOf), "a key's run starts at its head and keeps key order").toEqual(first.map((_, i) => i));
      const other = h.peer ? await h.peer() : h.store;
      expect(
        await other.claim({ claimer: "q", limit: 5, leaseMs: 60_000 }),
        "never two claimers on one key (also through another store instance): its later entries must not go to " +
          "another claimer",
      ).toEqual([]);
      expect(
        await h.store.claim({ claimer: "p", limit: 5, leaseMs: 60_000 }),
        "nor to a second claim of the same claimer while the run is leased",
      ).toEqual([]);
      await h.store.ack(
        first.map((e) => e.id),
        ctx("p"),
      );
      const rest: OutboxEntry[] = [];
      for (let round = 0; round < 12 && rest.length + first.length < 12; round++) {
        const batch = await h.store.claim({ claimer: "q", limit: 100, leaseMs: 60_000 });
        expect(batch.length, "a claimable key must yield at least its head").toBeGreaterThan(0);
        rest.push(...batch);
        await h.store.ack(
          batch.map((e) => e.id),
          ctx("q"),
        );
      }
      expect([...first, ...rest].map(seqOf), "runs continue where the last one ended").toEqual(
        Array.from({ length: 12 }, (_, i) => i),
      );
    },
  },
  "claim-limit": {
    title: "a claim never returns more than its limit, with hundreds pending over few and many keys",
    async run(h) {
      await enqueue(
        h,
        Array.from({ length: 300 }, (_, i) => message("limit", i, i % 2 === 0 ? `k${i % 3}` : null)),
      );
      await enqueue(
        h,
        Array.from({ length: 200 }, (_, i) => message("limit", 300 + i, `distinct-${i}`)),
      );
      let total = 0;
      for (const limit of [1, 7, 64, 100]) {
        const batch = await h.store.claim({ claimer: `c${limit}`, limit, leaseMs: 60_000 });
        expect(batch.length, `claim with limit ${limit} returned ${batch.length}`).toBeLessThanOrEqual(limit);
        expect(batch.length, "claimable entries exist, so a claim must return some").toBeGreaterThan(0);
        total += batch.length;
      }
      expect((await h.store.stats()).inFlight, "stats().inFlight counts every leased entry").toBe(total);
    },
  },
  takeover: {
    title: "a claim with a newer fence takes over entries leased under an older token at once",
    async run(h) {
      const lock = uniqueName("leader");
      await enqueue(h, [message("take", 1, "k"), message("take", 2, "k"), message("take", 3)]);
      const old = { lock, token: 5n };
      const byOld = await h.store.claim({ claimer: "old", limit: 10, leaseMs: 60_000, fence: old });
      expect(byOld.map(seqOf), "a fenced claim must return the available entries and key runs").toEqual([1, 2, 3]);
      expect(
        await h.store.claim({ claimer: "other", limit: 10, leaseMs: 60_000 }),
        "an unfenced claim must respect the lease",
      ).toEqual([]);
      const fresh = { lock, token: 6n };
      const byNew = await h.store.claim({ claimer: "new", limit: 10, leaseMs: 60_000, fence: fresh });
      expect(
        byNew.map(seqOf),
        "a claim with a newer token must take over the older token's leases without waiting for them",
      ).toEqual([1, 2, 3]);
      expect(
        byNew.map((e) => e.attempts),
        "a takeover is a claim: it must count an attempt",
      ).toEqual([2, 2, 2]);
      expect(
        await h.store.claim({ claimer: "peer", limit: 10, leaseMs: 60_000, fence: fresh }),
        "a lease taken under the same token must be respected",
      ).toEqual([]);
      expect(
        await h.store.claim({ claimer: "x", limit: 10, leaseMs: 60_000, fence: { lock: `${lock}-other`, token: 99n } }),
        "a token of another lock must not take over",
      ).toEqual([]);
      const ids = idsOf(byOld);
      for (const settle of [
        () => h.store.ack(ids, ctx("old", old)),
        () =>
          h.store.retry([{ id: ids[0] as string, error: "x", availableAt: new Date(h.clock.now()) }], ctx("old", old)),
        () => h.store.deadLetter([{ id: ids[0] as string, error: "x" }], ctx("old", old)),
        () => h.store.release(ids, ctx("old", old)),
      ]) {
        await expectCode(
          settle(),
          OutboxErrorCode.Fenced,
          "every settle (ack, retry, deadLetter, release) with the older token must be rejected after a takeover",
        );
      }
      const stats = await h.store.stats();
      expect(
        { pending: stats.pending, inFlight: stats.inFlight, dead: stats.dead },
        "rejected settles must change nothing",
      ).toEqual({
        pending: 3,
        inFlight: 3,
        dead: 0,
      });
      await h.store.ack(ids, ctx("new", fresh));
      expect((await h.store.stats()).pending, "the new leader must be able to ack what it took over").toBe(0);
    },
  },
  "fenced-details": {
    title: "OUTBOX_FENCED reports the lock, the refused token and the true newest token, also under races",
    async run(h) {
      const lock = uniqueName("leader");
      await enqueue(h, message("fd", 1));
      for (let token = 2n; token < 22n; token += 2n) {
        const results = await Promise.allSettled([
          h.store.claim({ claimer: "late", limit: 1, leaseMs: 1, fence: { lock, token } }),
          h.store.claim({ claimer: "early", limit: 1, leaseMs: 1, fence: { lock, token: token + 1n } }),
        ]);
        const [late] = results;
        if (late.status === "rejected") {
          const error = late.reason as unknown;
          expect(OutboxError.is(error, OutboxErrorCode.Fenced), "a claim may only fail as OUTBOX_FENCED here").toBe(
            true,
          );
          const details = (error as OutboxError).details;
          expect(details.lock, "OUTBOX_FENCED details.lock must name the lock").toBe(lock);
          expect(details.token, "OUTBOX_FENCED details.token must be the refused token, as a decimal string").toBe(
            token.toString(),
          );
          expect(
            BigInt(String(details.newest)),
            "details.newest must be the newest token, newer than the refused one",
          ).toBe(token + 1n);
        }
        expect(results[1].status, "the newer token must pass").toBe("fulfilled");
      }
      const error = await h.store.ack(["1"], ctx("late", { lock, token: 3n })).then(
        () => null,
        (caught: unknown) => caught,
      );
      expect(
        OutboxError.is(error, OutboxErrorCode.Fenced),
        "an ack with an older token must fail as OUTBOX_FENCED",
      ).toBe(true);
      expect(
        (error as OutboxError).details,
        "OUTBOX_FENCED details must be { lock, token, newest } with tokens as decimal strings",
      ).toMatchObject({ lock, token: "3", newest: "21" });
    },
  },
  "key-order-concurrent": {
    title: "per-key order holds with concurrent claimers settling runs at random",
    async run(h) {
      const keys = Array.from({ length: 6 }, (_, i) => `key-${i}`);
      await enqueue(
        h,
        Array.from({ length: 120 }, (_, i) => message("kc", i, keys[i % keys.length] as string)),
      );
      const claimers = ["p", "q", "r"];
      const published: Array<{ key: string | null; seq: number }> = [];
      let round = 0;
      while (published.length < 120 && round++ < 500) {
        const batches = await Promise.all(
          claimers.map((claimer) => h.store.claim({ claimer, limit: 5, leaseMs: 60_000 })),
        );
        const owner = new Map<string, string>();
        batches.forEach((batch, i) => {
          for (const entry of batch) {
            const holder = owner.get(entry.key as string);
            expect(holder === undefined || holder === claimers[i], `two claimers hold ${entry.key} at once`).toBe(true);
            owner.set(entry.key as string, claimers[i] as string);
          }
        });
        await Promise.all(
          batches.map(async (batch, i) => {
            // Claimer r acks the first half of each key's run and releases the rest, as a
            // relay does after a failure mid-run: the released entries must come back in order.
            const ack =
              i === 2
                ? batch.filter((entry) => {
                    const run = batch.filter((other) => other.key === entry.key);
                    return run.indexOf(entry) < Math.ceil(run.length / 2);
                  })
                : batch;
            const back = batch.filter((entry) => !ack.includes(entry));
            await h.store.ack(
              ack.map((e) => e.id),
              ctx(claimers[i] as string),
            );
            await h.store.release(
              back.map((e) => e.id),
              ctx(claimers[i] as string),
            );
            published.push(...ack.map((e) => ({ key: e.key, seq: seqOf(e) })));
          }),
        );
      }
      expect(published, "concurrent claimers together must get every entry").toHaveLength(120);
      expect(
        keyOrderViolations(published),
        "an entry must never be claimed before an earlier entry of its key",
      ).toEqual([]);
    },
  },
  "late-commit": {
    title: "an entry committed after a later-enqueued one is still delivered (no sequence-gap loss)",
    requires: (h) =>
      h.store.capabilities.concurrentWriters === false
        ? "store declares concurrentWriters: false (one writer at a time: a lower id cannot commit after a higher one)"
        : null,
    async run(h) {
      const { promise: slowMayCommit, resolve: releaseSlow } = deferred();
      const { promise: slowHasEnqueued, resolve: slowEnqueued } = deferred();
      const slow = h.transaction(async (tx) => {
        await h.store.enqueue(tx, message("gap", 1));
        slowEnqueued();
        await slowMayCommit;
      });
      try {
        await slowHasEnqueued;
        await within(
          enqueue(h, message("gap", 2)),
          10_000,
          "a second transaction could not commit while another one was open: this store has one writer at a " +
            "time. Declare capabilities.concurrentWriters: false (the check is then skipped), or give the harness " +
            "a connection pool",
        );
        const early = await claimAndAckAll(h.store as OutboxStore<never>, ctx("a"));
        expect(
          early.map(seqOf),
          "the committed later entry must be claimable while the earlier one is uncommitted",
        ).toEqual([2]);
      } finally {
        releaseSlow();
        await slow;
      }
      const late = await claimAndAckAll(h.store as OutboxStore<never>, ctx("a"));
      expect(
        late.map(seqOf),
        "an entry whose transaction commits after a later id was claimed must still be delivered (no sequence-gap loss)",
      ).toEqual([1]);
    },
  },
  stats: {
    title: "stats report backlog, in-flight, dead and the oldest pending entry",
    async run(h) {
      const start = h.clock.now();
      await enqueue(h, message("stats", 1));
      h.clock.advance(1_000);
      await enqueue(h, [message("stats", 2), message("stats", 3)]);
      const [first] = await h.store.claim({ claimer: "a", limit: 1, leaseMs: 60_000 });
      // Only the four counts: a store may add its own (a log-capture store's `capture`).
      const { pending, inFlight, dead, oldestPendingAt } = await h.store.stats();
      expect(
        { pending, inFlight, dead, oldestPendingAt },
        "stats must count pending (claimed or not), in-flight (leased) and dead entries, and the oldest pending createdAt",
      ).toEqual({ pending: 3, inFlight: 1, dead: 0, oldestPendingAt: new Date(start) });
      await h.store.ack([(first as OutboxEntry).id], ctx("a"));
      expect(
        (await h.store.stats()).oldestPendingAt,
        "oldestPendingAt must move on once the oldest entry is published",
      ).toEqual(new Date(start + 1_000));
    },
  },
  "in-flight-expiry": {
    title: "stats().inFlight counts live leases only: it drops when a lease expires",
    async run(h) {
      await enqueue(h, [message("ife", 1), message("ife", 2), message("ife", 3)]);
      await h.store.claim({ claimer: "a", limit: 2, leaseMs: 5_000 });
      expect((await h.store.stats()).inFlight, "stats().inFlight must count leased entries").toBe(2);
      h.clock.advance(5_000);
      const stats = await h.store.stats();
      expect(
        stats.inFlight,
        "stats().inFlight must drop when a lease expires (count leases that are still running on the injected clock)",
      ).toBe(0);
      expect(stats.pending, "entries whose lease expired are still pending").toBe(3);
    },
  },
  "wake-ups": {
    title: "a committed enqueue delivers a wake-up to subscribers",
    requires: (h) => (h.store.capabilities.wakeUps ? null : "store declares wakeUps: false"),
    async run(h) {
      expect(typeof h.store.subscribe, "a store declaring wakeUps: true must implement subscribe()").toBe("function");
      const { promise: wake, resolve: woken } = deferred();
      const unsubscribe = await (h.store.subscribe as NonNullable<OutboxStore["subscribe"]>)(() => woken());
      try {
        await enqueue(h, message("wake", 1));
        const result = await Promise.race([
          wake.then(() => "woken"),
          new Promise((resolve) => setTimeout(resolve, 5_000, "timeout")),
        ]);
        expect(result, "a committed enqueue must wake subscribers within 5 s").toBe("woken");
      } finally {
        await unsubscribe();
      }
    },
  },
  closed: {
    title: "after close, every operation fails with OUTBOX_CLOSED",
    async run(h) {
      await h.store.close();
      await expectCode(
        h.store.claim({ claimer: "a", limit: 1, leaseMs: 1 }),
        OutboxErrorCode.Closed,
        "claim after close must fail",
      );
      await expectCode(h.store.ack(["1"], ctx("a")), OutboxErrorCode.Closed, "ack after close must fail");
      await expectCode(h.store.stats(), OutboxErrorCode.Closed, "stats after close must fail");
      await expectCode(enqueue(h, message("closed", 1)), OutboxErrorCode.Closed, "enqueue after close must fail");
    },
  },
  "fenced-settles": {
    title: "every settle (ack, retry, deadLetter, release) with an older token is rejected and changes nothing",
    async run(h) {
      const lock = uniqueName("leader");
      await enqueue(h, [message("fs", 1), message("fs", 2), message("fs", 3), message("fs", 4)]);
      const old = { lock, token: 5n };
      const byOld = await h.store.claim({ claimer: "old", limit: 10, leaseMs: 60_000, fence: old });
      expect(byOld, "a fenced claim must return the available entries").toHaveLength(4);
      // A newer leader appears and takes over one entry: the other three are still the old one's.
      const byNew = await h.store.claim({ claimer: "new", limit: 1, leaseMs: 60_000, fence: { lock, token: 6n } });
      const stillOld = byOld.filter((e) => !byNew.some((n) => n.id === e.id));
      expect(stillOld.length, "a claim with limit 1 must take over at most one entry").toBeGreaterThanOrEqual(3);
      const [a, b, c] = stillOld as [OutboxEntry, OutboxEntry, OutboxEntry];
      await expectCode(
        h.store.ack([a.id], ctx("old", old)),
        OutboxErrorCode.Fenced,
        "ack with an older token must be rejected, also for entries the old claimer still holds",
      );
      await expectCode(
        h.store.retry([{ id: b.id, error: "x", availableAt: new Date(h.clock.now()) }], ctx("old", old)),
        OutboxErrorCode.Fenced,
        "retry with an older token must be rejected, also for entries the old claimer still holds",
      );
      await expectCode(
        h.store.deadLetter([{ id: c.id, error: "x" }], ctx("old", old)),
        OutboxErrorCode.Fenced,
        "deadLetter with an older token must be rejected, also for entries the old claimer still holds",
      );
      await expectCode(
        h.store.release(idsOf(stillOld), ctx("old", old)),
        OutboxErrorCode.Fenced,
        "release with an older token must be rejected, also for entries the old claimer still holds",
      );
      const stats = await h.store.stats();
      expect(
        { pending: stats.pending, inFlight: stats.inFlight, dead: stats.dead },
        "a rejected (fenced) settle must change nothing: no ack, no dead letter, no released lease",
      ).toEqual({ pending: 4, inFlight: 4, dead: 0 });
      expect(
        await h.store.claim({ claimer: "other", limit: 10, leaseMs: 60_000 }),
        "a rejected (fenced) release or retry must leave the leases in place",
      ).toEqual([]);
    },
  },
  "fenced-claim-atomic": {
    title: "a claim rejected as fenced leases nothing and counts no attempt",
    async run(h) {
      const lock = uniqueName("leader");
      await enqueue(h, [message("fca", 1), message("fca", 2, "k"), message("fca", 3, "k"), message("fca", 4)]);
      // The newest token is 6, seen by a claim that leased nothing (limit 1, then released).
      const [probe] = await h.store.claim({ claimer: "new", limit: 1, leaseMs: 60_000, fence: { lock, token: 6n } });
      await h.store.release(probe ? [probe.id] : [], ctx("new", { lock, token: 6n }));
      for (let i = 0; i < 3; i++) {
        await expectCode(
          h.store.claim({ claimer: "old", limit: 10, leaseMs: 60_000, fence: { lock, token: 5n } }),
          OutboxErrorCode.Fenced,
          "a claim with a token older than the newest seen must be rejected",
        );
      }
      expect(
        (await h.store.stats()).inFlight,
        "a claim rejected as fenced must lease nothing: check the token in the same transaction, before leasing",
      ).toBe(0);
      const all = await h.store.claim({ claimer: "other", limit: 10, leaseMs: 60_000 });
      expect(all.map(seqOf), "a claim rejected as fenced must leave every entry claimable").toEqual([1, 2, 3, 4]);
      expect(
        all.map((e) => e.attempts),
        "a claim rejected as fenced must not count an attempt (nor must the released probe claim)",
      ).toEqual([1, 1, 1, 1]);
    },
  },
  "purge-by-settle-time": {
    title: "purge goes by when an entry was published or dead-lettered, not by when it was created",
    async run(h) {
      const t0 = h.clock.now();
      // Settled long ago: published and dead at t0.
      await enqueue(h, [message("pst", 1), message("pst", 2)]);
      const early = await h.store.claim({ claimer: "a", limit: 10, leaseMs: 600_000 });
      await h.store.ack([(early[0] as OutboxEntry).id], ctx("a"));
      await h.store.deadLetter([{ id: (early[1] as OutboxEntry).id, error: "x" }], ctx("a"));
      // Created long ago, published only now.
      await enqueue(h, message("pst", 3));
      h.clock.advance(100_000);
      const [oldEntry] = await h.store.claim({ claimer: "a", limit: 10, leaseMs: 600_000 });
      expect(seqOf(oldEntry as OutboxEntry), "the old entry must be claimable").toBe(3);
      await h.store.ack([(oldEntry as OutboxEntry).id], ctx("a"));
      // Created and dead-lettered now: young.
      await enqueue(h, message("pst", 4));
      const [young] = await h.store.claim({ claimer: "a", limit: 10, leaseMs: 600_000 });
      await h.store.deadLetter([{ id: (young as OutboxEntry).id, error: "young" }], ctx("a"));
      const cutoff = new Date(t0 + 50_000);
      expect(
        await h.store.purge({ olderThan: cutoff }),
        "purge must remove exactly the entries published or dead-lettered before the cutoff: an entry created " +
          "long ago but published recently stays, and so does a young dead entry",
      ).toBe(2);
      expect(
        (await h.store.listDead()).map((e) => e.lastError),
        "a dead entry dead-lettered after the cutoff must stay",
      ).toEqual(["young"]);
      expect(
        await h.store.purge({ olderThan: new Date(h.clock.now() + 1) }),
        "an entry created before the cutoff but published after it must survive the first purge",
      ).toBe(2);
      expect((await h.store.stats()).dead, "the second purge removes the young dead entry").toBe(0);
    },
  },
  "purge-cutoff-edge": {
    title:
      "purge keeps an entry settled exactly at its cutoff (only older ones go), and an empty error comes back empty",
    async run(h) {
      const settledAt = h.clock.now();
      await enqueue(h, [message("edge", 1), message("edge", 2)]);
      const [published, dead] = await h.store.claim({ claimer: "a", limit: 10, leaseMs: 600_000 });
      await h.store.ack([(published as OutboxEntry).id], ctx("a"));
      await h.store.deadLetter([{ id: (dead as OutboxEntry).id, error: "" }], ctx("a"));
      expect(
        (await h.store.listDead()).map((entry) => entry.lastError),
        "an empty error must come back as an empty string, not null",
      ).toEqual([""]);
      expect(
        await h.store.purge({ olderThan: new Date(settledAt) }),
        "entries settled exactly at the cutoff are not older than it: they stay",
      ).toBe(0);
      expect(await h.store.purge({ olderThan: new Date(settledAt + 1) }), "a cutoff 1 ms later removes both").toBe(2);
    },
  },
  "pending-summary-ties": {
    title: "pendingSummary breaks count ties by key (hot keys, blocked keys) and counts a delayed start as waiting",
    requires: (h) => (h.store.pendingSummary ? null : "store has no optional pendingSummary()"),
    async run(h) {
      const summary = h.store.pendingSummary?.bind(h.store) as NonNullable<OutboxStore["pendingSummary"]>;
      const topic = uniqueName("ties");
      // Heads of b, d, a, c first (claimed and failed, so each key is blocked), then the rest: c holds 3, the others 2.
      const heads = await enqueue(h, [
        message(topic, 1, "b"),
        message(topic, 2, "d"),
        message(topic, 3, "a"),
        message(topic, 4, "c"),
      ]);
      const claimed = await h.store.claim({ claimer: "a", limit: 10, leaseMs: 600_000 });
      expect(idsOf(claimed).sort(), "the four heads are claimable").toEqual([...heads].sort());
      const later = new Date(h.clock.now() + 60_000);
      await h.store.retry(
        heads.map((id) => ({ id, error: "no", availableAt: later })),
        ctx("a"),
      );
      await enqueue(h, [
        message(topic, 5, "d"),
        message(topic, 6, "b"),
        message(topic, 7, "c"),
        message(topic, 8, "a"),
        message(topic, 9, "c"),
        { ...message(topic, 10), availableAt: later },
      ]);
      const tied = await summary({ hotKeys: 2, blockedKeys: 2 });
      expect(tied.hotKeys, "c holds the most; of the keys tied at 2, a comes first (most first, then by key)").toEqual([
        { key: "c", pending: 3 },
        { key: "a", pending: 2 },
      ]);
      expect(
        tied.blockedKeys.map((blocked) => [blocked.key, blocked.pending]),
        "blocked keys: most pending first, then by key",
      ).toEqual([
        ["c", 3],
        ["a", 2],
      ]);
      expect(tied.retryWaiting, "four failed heads and one keyless entry with a delayed start wait").toBe(5);
    },
  },
  "list-dead-order": {
    title: "listDead returns dead entries oldest first (id order), up to its limit, and pages on after an id",
    async run(h) {
      const enqueued = await enqueue(
        h,
        Array.from({ length: 5 }, (_, i) => message("ld", i)),
      );
      await enqueue(h, message("ld", 99));
      const claimed = await h.store.claim({ claimer: "a", limit: 5, leaseMs: 60_000 });
      // Dead-lettered in a scrambled order, at different times.
      for (const index of [3, 0, 4, 1, 2]) {
        await h.store.deadLetter([{ id: (claimed[index] as OutboxEntry).id, error: `dead-${index}` }], ctx("a"));
        h.clock.advance(1_000);
      }
      expect(
        idsOf(await h.store.listDead()),
        "listDead must return dead entries oldest first (in id order), whatever order they died in",
      ).toEqual(enqueued);
      expect(idsOf(await h.store.listDead({ limit: 2 })), "listDead({ limit }) must return the oldest `limit`").toEqual(
        enqueued.slice(0, 2),
      );
      expect(
        idsOf(await h.store.listDead({ limit: 2, after: enqueued[1] })),
        "listDead({ after }) must continue with the entries after that id",
      ).toEqual(enqueued.slice(2, 4));
      expect(
        idsOf(await h.store.listDead({ after: enqueued[4] })),
        "listDead({ after: the last id }) must return nothing",
      ).toEqual([]);
      // The cursor may be an entry that is gone since: paging goes on after it.
      await h.store.requeueDead([enqueued[2] as string]);
      expect(
        idsOf(await h.store.listDead({ after: enqueued[2] })),
        "listDead({ after }) must page on after an id that is no longer dead",
      ).toEqual(enqueued.slice(3));
    },
  },
  "list-dead-filters": {
    title:
      "listDead's topic, key and errorContains filters pick exactly the matching dead entries, in full pages, " +
      "and refuse bad values",
    requires: (h) =>
      h.store.capabilities.deadLetterFilters
        ? null
        : "store does not declare capabilities.deadLetterFilters (its listDead may ignore the filters)",
    async run(h) {
      const orders = uniqueName("orders");
      const loud = orders.toUpperCase();
      const spaced = `${orders} `;
      const billing = uniqueName("billing");
      // Dead entries (a to l) with a pending one that failed and a published one among them: the
      // matches of each filter lie scattered, so a page filtered after it was read comes up short.
      const fixture: Array<{ label: string; topic: string; key: string | null; error?: string; fate?: string }> = [
        { label: "a", topic: orders, key: "k1", error: "Timeout after 30s" },
        { label: "b", topic: billing, key: "k1", error: "disk 100% full" },
        { label: "c", topic: orders, key: null, error: "field_name is invalid" },
        { label: "d", topic: loud, key: "K1", error: "TIMEOUT waiting for the broker" },
        { label: "e", topic: orders, key: "k1 ", error: "fieldXname is invalid" },
        { label: "f", topic: billing, key: "ключ-🔑", error: "path C:\\temp\\x.json not found" },
        { label: "retrying", topic: orders, key: "k1", error: "Timeout after 30s", fate: "retry" },
        { label: "g", topic: spaced, key: "k1", error: "100 percent of the quota used" },
        { label: "h", topic: orders, key: "ключ-🔑", error: "path C:temp is read-only" },
        { label: "published", topic: orders, key: "k1", fate: "ack" },
        { label: "i", topic: billing, key: null, error: "ошибка 🚫 refused: a.c* (regex)" },
        { label: "j", topic: orders, key: "k1", error: "abc regex handler" },
        { label: "k", topic: orders, key: null, error: "DISK 100% FULL again" },
        { label: "l", topic: loud, key: "k1", error: "quota_exceeded \\ retry later" },
      ];
      const ids = await enqueue(
        h,
        fixture.map((spec, i) => message(spec.topic, i, spec.key)),
      );
      const idOf = new Map(fixture.map((spec, i) => [spec.label, ids[i] as string]));
      const claimed: OutboxEntry[] = [];
      for (let round = 0; round < 10 && claimed.length < ids.length; round++) {
        claimed.push(...(await h.store.claim({ claimer: "a", limit: 100, leaseMs: 600_000 })));
      }
      expect(idsOf(claimed).sort(), "every entry of the fixture is claimable").toEqual([...ids].sort());
      const dead = fixture.filter((spec) => spec.fate === undefined);
      await h.store.deadLetter(
        dead.map((spec) => ({ id: idOf.get(spec.label) as string, error: spec.error as string })),
        ctx("a"),
      );
      await h.store.retry(
        [
          {
            id: idOf.get("retrying") as string,
            error: "Timeout after 30s",
            availableAt: new Date(h.clock.now() + 600_000),
          },
        ],
        ctx("a"),
      );
      await h.store.ack([idOf.get("published") as string], ctx("a"));

      /** Every page of `filter`, `limit` at a time, each asked after the last id of the one before. */
      const pages = async (filter: ListDeadOptions, limit: number): Promise<string[][]> => {
        const read: string[][] = [];
        let after: string | undefined;
        // Bounded: a store that never comes up short must not loop for ever.
        for (let page = 0; page <= dead.length + 1; page++) {
          const entries = await h.store.listDead({ ...filter, limit, ...(after === undefined ? {} : { after }) });
          read.push(idsOf(entries));
          const last = entries.at(-1);
          if (entries.length < limit || last === undefined) break;
          after = last.id;
        }
        return read;
      };
      const cases: Array<{ filter: ListDeadOptions; labels: string[]; rule: string }> = [
        { filter: { topic: orders }, labels: ["a", "c", "e", "h", "j", "k"], rule: "topic matches exactly" },
        { filter: { topic: loud }, labels: ["d", "l"], rule: "topic is case-sensitive" },
        { filter: { topic: spaced }, labels: ["g"], rule: "a topic's trailing space counts" },
        { filter: { key: "k1" }, labels: ["a", "b", "g", "j", "l"], rule: "key matches exactly" },
        { filter: { key: "K1" }, labels: ["d"], rule: "key is case-sensitive" },
        { filter: { key: "k1 " }, labels: ["e"], rule: "a key's trailing space counts" },
        { filter: { key: "ключ-🔑" }, labels: ["f", "h"], rule: "a unicode key matches exactly" },
        { filter: { key: null }, labels: ["c", "i", "k"], rule: "key: null means entries without a key" },
        {
          filter: { errorContains: "timeout" },
          labels: ["a", "d"],
          rule: "errorContains ignores case, and a pending entry's last error never counts",
        },
        { filter: { errorContains: "100%" }, labels: ["b", "k"], rule: "% in errorContains is a plain character" },
        { filter: { errorContains: "%" }, labels: ["b", "k"], rule: "% alone matches only errors holding a %" },
        {
          filter: { errorContains: "field_name" },
          labels: ["c"],
          rule: "_ in errorContains is a plain character, not any one character",
        },
        { filter: { errorContains: "_" }, labels: ["c", "l"], rule: "_ alone matches only errors holding a _" },
        {
          filter: { errorContains: "C:\\temp" },
          labels: ["f"],
          rule: "a backslash in errorContains is a plain character, not an escape",
        },
        {
          filter: { errorContains: "\\" },
          labels: ["f", "l"],
          rule: "a backslash alone matches only errors holding one",
        },
        { filter: { errorContains: "a.c*" }, labels: ["i"], rule: ". and * in errorContains are plain characters" },
        {
          filter: { errorContains: "(regex)" },
          labels: ["i"],
          rule: "parentheses in errorContains are plain characters",
        },
        { filter: { errorContains: "ошибка 🚫" }, labels: ["i"], rule: "unicode in errorContains matches exactly" },
        {
          filter: { errorContains: "no such failure" },
          labels: [],
          rule: "an error text no entry has matches nothing",
        },
        {
          filter: { topic: orders, key: "k1", errorContains: "TIMEOUT" },
          labels: ["a"],
          rule: "filters combine: every one must match",
        },
        { filter: { topic: orders, key: null }, labels: ["c", "k"], rule: "filters combine: topic and no key" },
        { filter: { topic: billing, errorContains: "%" }, labels: ["b"], rule: "filters combine: topic and error" },
      ];
      for (const { filter, labels, rule } of cases) {
        const expected = labels.map((label) => idOf.get(label) as string);
        const shown = JSON.stringify(filter);
        expect(
          idsOf(await h.store.listDead(filter)),
          `listDead(${shown}) must return exactly the matching dead entries, oldest first (${rule})`,
        ).toEqual(expected);
        const paged = await pages(filter, 2);
        expect(
          paged.flat(),
          `listDead(${shown}) paged 2 at a time (after: the last id of the page before) must return the same ` +
            `entries: the filter applies before the limit, not to a page already cut (${rule})`,
        ).toEqual(expected);
        expect(
          paged.slice(0, -1).every((page) => page.length === 2),
          `listDead(${shown}, limit 2): every page but the last must be full (a page of 2 matches, however ` +
            "many entries that do not match lie between them)",
        ).toBe(true);
      }
      expect(
        idsOf(await h.store.listDead({ topic: orders, after: idOf.get("b") as string, limit: 3 })),
        "listDead({ topic, after }) must page on after an id that does not match the filter",
      ).toEqual(["c", "e", "h"].map((label) => idOf.get(label)));
      expect(
        (await pages({ key: "k1" }, 1)).flat(),
        "listDead({ key }) paged one at a time must return every match",
      ).toEqual(["a", "b", "g", "j", "l"].map((label) => idOf.get(label)));

      const bad: Array<[string, unknown]> = [
        ["an empty topic", { topic: "" }],
        ["a topic that is not a string", { topic: 7 }],
        ["an empty key (null asks for entries without a key)", { key: "" }],
        ["a key that is not a string or null", { key: ["k1"] }],
        ["an empty errorContains", { errorContains: "" }],
        ["an errorContains that is not a string", { errorContains: null }],
        ["an errorContains over 4,096 characters", { errorContains: "x".repeat(4_097) }],
        ["a key with a lone surrogate", { key: "\ud800" }],
      ];
      for (const [what, options] of bad) {
        await expectCode(
          h.store.listDead(options as ListDeadOptions),
          OutboxErrorCode.InvalidOptions,
          `listDead must refuse ${what} with OUTBOX_INVALID_OPTIONS`,
        );
      }
      expect(
        idsOf(await h.store.listDead({ errorContains: "x".repeat(4_096) })),
        "an errorContains of 4,096 characters is allowed (and matches nothing here)",
      ).toEqual([]);
    },
  },
  "settle-only-pending": {
    title: "ack, retry, deadLetter and release of an entry already published or dead change nothing",
    async run(h) {
      const settledAt = h.clock.now();
      const [published, dead] = (await enqueue(h, [message("sop", 1), message("sop", 2)])) as [string, string];
      const claimed = await h.store.claim({ claimer: "a", limit: 10, leaseMs: 600_000 });
      expect(idsOf(claimed), "both entries are claimable").toEqual([published, dead]);
      await h.store.ack([published], ctx("a"));
      await h.store.deadLetter([{ id: dead, error: "first death" }], ctx("a"));
      h.clock.advance(10_000);
      const both = [published, dead];
      // The settler still names itself as the claimer: only the entries' state may stop these.
      await h.store.ack(both, ctx("a"));
      expect(
        (await h.store.stats()).dead,
        "an ack must not publish a dead entry: settling is for pending entries only",
      ).toBe(1);
      await h.store.retry(
        both.map((id) => ({ id, error: "late retry", availableAt: new Date(h.clock.now()) })),
        ctx("a"),
      );
      await h.store.deadLetter(
        both.map((id) => ({ id, error: "late death" })),
        ctx("a"),
      );
      await h.store.release(both, ctx("a"));
      expect(
        await h.store.claim({ claimer: "b", limit: 10, leaseMs: 600_000 }),
        "a retry or release of a published or dead entry must not make it pending again",
      ).toEqual([]);
      const { pending, dead: deadCount } = await h.store.stats();
      expect({ pending, dead: deadCount }, "a settled entry stays as it was settled").toEqual({ pending: 0, dead: 1 });
      expect(
        (await h.store.listDead()).map((entry) => [entry.id, entry.lastError, entry.attempts]),
        "a dead entry keeps its error and attempts: a later deadLetter, retry or release of it changes nothing",
      ).toEqual([[dead, "first death", 1]]);
      expect(
        await h.store.purge({ olderThan: new Date(settledAt + 1) }),
        "settling again must not move an entry's settle time: both were settled 10 s before the late settles, so a " +
          "cutoff 1 ms after the first settle removes both",
      ).toBe(2);
    },
  },
  "settle-by-former-holder": {
    title:
      "a settle by a claimer that no longer holds the entry (it retried or released it, or its lease ran out and " +
      "another took it) changes nothing",
    async run(h) {
      const [waiting, reclaimed, released] = (await enqueue(h, [
        message("sfh", 1),
        message("sfh", 2),
        message("sfh", 3),
      ])) as [string, string, string];
      const first = await h.store.claim({ claimer: "a", limit: 10, leaseMs: 5_000 });
      expect(idsOf(first), "the three entries are claimable").toEqual([waiting, reclaimed, released]);
      const retryAt = new Date(h.clock.now() + 60_000);
      await h.store.retry([{ id: waiting, error: "first failure", availableAt: retryAt }], ctx("a"));
      await h.store.release([released], ctx("a"));
      h.clock.advance(5_000);
      const second = await h.store.claim({ claimer: "b", limit: 10, leaseMs: 600_000 });
      expect(idsOf(second), "once a's lease ran out, b claims the lapsed and the released entry").toEqual([
        reclaimed,
        released,
      ]);
      // a settles late, as a relay whose replies were slow would: a holds none of the three any more.
      const all = [waiting, reclaimed, released];
      await h.store.deadLetter(
        all.map((id) => ({ id, error: "stale death" })),
        ctx("a"),
      );
      await h.store.retry(
        all.map((id) => ({ id, error: "stale retry", availableAt: new Date(h.clock.now()) })),
        ctx("a"),
      );
      await h.store.release(all, ctx("a"));
      if (h.store.releaseClaimer) {
        expect(
          await h.store.releaseClaimer(ctx("a")),
          "releaseClaimer by a former holder gives back nothing: retry and release end a claimer's hold",
        ).toBe(0);
      }
      const { pending, inFlight, dead } = await h.store.stats();
      expect(
        { pending, inFlight, dead },
        "a settle by a former holder must change nothing: no dead letter, and b's leases stay",
      ).toEqual({ pending: 3, inFlight: 2, dead: 0 });
      expect(
        await h.store.claim({ claimer: "c", limit: 10, leaseMs: 600_000 }),
        "b's leases stay, and the retried entry still waits for its own retry time (a stale retry must not move it)",
      ).toEqual([]);
      await h.store.ack([reclaimed, released], ctx("b"));
      h.clock.advance(60_000);
      const [again] = await h.store.claim({ claimer: "c", limit: 10, leaseMs: 600_000 });
      expect(again?.id, "the retried entry comes back at its retry time").toBe(waiting);
      expect(
        again?.attempts,
        "a stale release must not take back the attempt of an entry that waited for its retry: this is attempt 2",
      ).toBe(2);
      expect(again?.lastError, "the error is the one its holder recorded, not a stale settle's").toBe("first failure");
    },
  },
  "ack-any-holder": {
    title: "ack publishes pending entries whoever holds them: anyone may ack (the fence decides), not just the holder",
    async run(h) {
      const [own, lapsed, held, free] = (await enqueue(h, [
        message("aah", 1),
        message("aah", 2),
        message("aah", 3),
        message("aah", 4),
      ])) as [string, string, string, string];
      expect(idsOf(await h.store.claim({ claimer: "a", limit: 1, leaseMs: 600_000 })), "a takes the first").toEqual([
        own,
      ]);
      expect(idsOf(await h.store.claim({ claimer: "b", limit: 1, leaseMs: 1_000 })), "b the second").toEqual([lapsed]);
      expect(idsOf(await h.store.claim({ claimer: "c", limit: 1, leaseMs: 600_000 })), "c the third").toEqual([held]);
      h.clock.advance(1_000);
      // a published all four (a relay whose lease ran out publishes anyway): its ack must count for each.
      await h.store.ack([own, lapsed, held, free], ctx("a"));
      expect(
        (await h.store.stats()).pending,
        "an ack publishes every pending entry it names: its own, one whose lease ran out, one another claimer " +
          "holds and one nobody claimed (anyone may ack)",
      ).toBe(0);
      h.clock.advance(600_000);
      expect(
        await h.store.claim({ claimer: "d", limit: 10, leaseMs: 1_000 }),
        "acked entries are never claimed again",
      ).toEqual([]);
    },
  },
  "stats-oldest-created": {
    title: "stats().oldestPendingAt is the oldest pending entry's createdAt, however late it is available",
    async run(h) {
      const t0 = h.clock.now();
      const [first] = await enqueue(h, message("soc", 1));
      h.clock.advance(1_000);
      const [second] = await enqueue(h, message("soc", 2));
      const [claimed] = await h.store.claim({ claimer: "a", limit: 1, leaseMs: 60_000 });
      expect(claimed?.id, "the oldest entry is claimed first").toBe(first);
      await h.store.retry([{ id: first as string, error: "x", availableAt: new Date(t0 + 60_000) }], ctx("a"));
      expect(
        (await h.store.stats()).oldestPendingAt,
        "an entry waiting for its retry is still the oldest pending one: oldestPendingAt is its createdAt, not its " +
          "retry time",
      ).toEqual(new Date(t0));
      const [next] = await h.store.claim({ claimer: "a", limit: 1, leaseMs: 60_000 });
      expect(next?.id, "the second entry is claimable").toBe(second);
      await h.store.ack([second as string], ctx("a"));
      h.clock.advance(1_000);
      await enqueue(h, { ...message("soc", 3), availableAt: new Date(t0 + 600_000) });
      h.clock.advance(60_000);
      const [retried] = await h.store.claim({ claimer: "a", limit: 1, leaseMs: 60_000 });
      expect(retried?.id, "the retried entry comes back at its retry time").toBe(first);
      await h.store.ack([first as string], ctx("a"));
      expect(
        (await h.store.stats()).oldestPendingAt,
        "an entry enqueued with a delayed start counts from its createdAt, not from when it becomes available",
      ).toEqual(new Date(t0 + 2_000));
    },
  },
  "empty-key-order": {
    title: "an empty-string key is a key like any other: one claimer at a time, in order, held behind a failing head",
    async run(h) {
      const topic = uniqueName("ek");
      const outcome = await enqueue(h, [message(topic, 1, ""), message(topic, 2, ""), message(topic, 3, "")]).then(
        (ids) => ({ ids, error: null as unknown }),
        (error: unknown) => ({ ids: [] as string[], error }),
      );
      if (outcome.error !== null) {
        expect(
          OutboxError.is(outcome.error) ? outcome.error.code : outcome.error,
          "a store that cannot keep an empty-string key must refuse it with OUTBOX_INVALID_ENTRY (round-trip-edges)",
        ).toBe(OutboxErrorCode.InvalidEntry);
        return;
      }
      const [e1, e2, e3] = outcome.ids as [string, string, string];
      const [keyless] = await enqueue(h, message(topic, 4));
      expect(
        idsOf(await h.store.claim({ claimer: "a", limit: 1, leaseMs: 60_000 })),
        "a claim with limit 1 returns the oldest entry, the head of key ''",
      ).toEqual([e1]);
      expect(
        idsOf(await h.store.claim({ claimer: "b", limit: 10, leaseMs: 60_000 })),
        "while the head of key '' is leased, no other claimer may take the key's later entries: '' is a key, not " +
          "the absence of one",
      ).toEqual([keyless]);
      await h.store.retry([{ id: e1, error: "x", availableAt: new Date(h.clock.now() + 10_000) }], ctx("a"));
      expect(
        await h.store.claim({ claimer: "c", limit: 10, leaseMs: 60_000 }),
        "while the head of key '' waits for its retry, the key's later entries wait too",
      ).toEqual([]);
      h.clock.advance(10_000);
      const resumed = await h.store.claim({ claimer: "c", limit: 10, leaseMs: 60_000 });
      expect(idsOf(resumed), "after the retry time the run of key '' resumes at its head, in order").toEqual([
        e1,
        e2,
        e3,
      ]);
      expect(
        resumed.map((entry) => entry.key),
        "the entries keep their empty-string key",
      ).toEqual(["", "", ""]);
    },
  },
  "attempts-reported": {
    title:
      "claim, pendingSummary and listDead report one attempt count: the claims that returned the entry, not those given back",
    async run(h) {
      const [id] = (await enqueue(h, [message("att", 1, "att"), message("att", 2, "att")])) as [string, string];
      const claimedAttempts: number[] = [];
      const claimHead = async () => {
        const [head] = await h.store.claim({ claimer: "a", limit: 1, leaseMs: 60_000 });
        expect(head?.id, "the key's head is claimable").toBe(id);
        claimedAttempts.push((head as OutboxEntry).attempts);
      };
      for (const failure of ["failure 1", "failure 2"]) {
        await claimHead();
        await h.store.retry([{ id, error: failure, availableAt: new Date(h.clock.now()) }], ctx("a"));
      }
      await claimHead();
      await h.store.release([id], ctx("a"));
      await claimHead();
      expect(claimedAttempts, "each claim counts one attempt, and a claim given back by release none").toEqual([
        1, 2, 3, 3,
      ]);
      const retryAt = new Date(h.clock.now() + 1_000);
      await h.store.retry([{ id, error: "failure 3", availableAt: retryAt }], ctx("a"));
      if (h.store.pendingSummary) {
        expect(
          (await h.store.pendingSummary()).blockedKeys.map((blocked) => [blocked.entryId, blocked.attempts]),
          "pendingSummary reports the failing head's attempts as its claims did: 3",
        ).toEqual([[id, 3]]);
      }
      h.clock.advance(1_000);
      await claimHead();
      await h.store.deadLetter([{ id, error: "failure 4" }], ctx("a"));
      expect(
        (await h.store.listDead()).map((entry) => [entry.id, entry.attempts, entry.lastError]),
        "listDead reports a dead entry's attempts as its claims did: after 4 claims, 4",
      ).toEqual([[id, 4, "failure 4"]]);
    },
  },
  "fence-race": {
    title:
      "racing fenced calls never lower the newest token: once a call with a token returned, an older token is refused",
    async run(h) {
      const lock = uniqueName("leader");
      await enqueue(
        h,
        Array.from({ length: 50 }, (_, i) => message("frace", i)),
      );
      const other = h.peer ? await h.peer() : h.store;
      for (let round = 0; round < 30; round++) {
        const newer = { lock, token: BigInt(2 * round + 2) };
        const older = { lock, token: BigInt(2 * round + 1) };
        // The newer call starts first and is the long one (it takes over every lease of the round before);
        // older calls follow at once and after one, two and three round trips, so that one of them tends to
        // write its token while the newer call is still running: a store that keeps the last token written,
        // not the greater one, then ends with the older token.
        const newerCall = h.store.claim({ claimer: `new-${round}`, limit: 50, leaseMs: 600_000, fence: newer });
        const olderCalls = [0, 1, 2, 3].map(async (hops) => {
          for (let hop = 0; hop < hops; hop++) await other.stats();
          await other.ack([], ctx(`old-${round}`, older));
        });
        const [byNewer, ...byOlder] = await Promise.allSettled([newerCall, ...olderCalls]);
        expect(byNewer?.status, "a claim with the newest token must pass").toBe("fulfilled");
        for (const outcome of byOlder) {
          if (outcome.status === "fulfilled") continue;
          expect(
            OutboxError.is(outcome.reason) ? outcome.reason.code : outcome.reason,
            "a fenced call may only fail as OUTBOX_FENCED here",
          ).toBe(OutboxErrorCode.Fenced);
        }
        await expectCode(
          h.store.claim({ claimer: "probe", limit: 1, leaseMs: 1, fence: older }),
          OutboxErrorCode.Fenced,
          `once a call with token ${newer.token} returned, a call with the older token ${older.token} must be ` +
            "refused, however racing calls interleaved: the newest token only ever grows (keep the greater token, " +
            "never the last one written)",
        );
      }
    },
  },
  "give-back-race": {
    title:
      "claimers racing for a key's run, whose entries were given back unevenly before, count no attempt for what " +
      "they give back",
    async run(h) {
      // Across instances where the harness has peer(): other relays' stores, whose claims really race.
      const stores = h.peer ? [h.store, await h.peer(), await h.peer(), await h.peer()] : [h.store, h.store];
      const returned = new Map<string, number>();
      const check = (entry: OutboxEntry) => {
        const count = (returned.get(entry.id) ?? 0) + 1;
        returned.set(entry.id, count);
        expect(
          entry.attempts,
          `entry ${entry.id} was returned by ${count} claim(s) but shows ${entry.attempts} attempts: entries a claim ` +
            "leased and gave back (its run cut where a racing claimer got an earlier entry of the key) must not " +
            "count an attempt",
        ).toBe(count);
      };
      for (let round = 0; round < 30; round++) {
        await enqueue(
          h,
          Array.from({ length: 8 }, (_, i) => message("gbr", i, `gbr-${round}`)),
        );
        // Each entry of the run claimed and released a different number of times: their states differ,
        // so a store may lease the run in several writes, and racing claimers can split it between them.
        for (let limit = 1; limit < 8; limit++) {
          const run = await h.store.claim({ claimer: "prep", limit, leaseMs: 60_000 });
          await h.store.release(idsOf(run), ctx("prep"));
        }
        const batches = await Promise.all(
          stores.map((store, i) => store.claim({ claimer: `racer-${i}`, limit: 8, leaseMs: 60_000 })),
        );
        for (const [i, batch] of batches.entries()) {
          batch.forEach(check);
          await h.store.ack(idsOf(batch), ctx(`racer-${i}`));
        }
        (await claimAndAckAll(h.store as OutboxStore<never>, ctx("rest"))).forEach(check);
      }
    },
  },
  "relay-activity": {
    title:
      "relayActivity reports the newest fencing token per lock, unexpired leases per relay, the last publish and " +
      "the recent errors, newest first",
    requires: (h) => (h.store.relayActivity ? null : "store has no optional relayActivity()"),
    async run(h) {
      const activity = h.store.relayActivity?.bind(h.store) as NonNullable<OutboxStore["relayActivity"]>;
      expect(await activity(), "a fresh outbox has no fence, no lease, no publish and no error").toEqual({
        scanned: 0,
        fences: [],
        claimers: [],
        lastPublishedAt: null,
        recentErrors: [],
      });
      const lock = uniqueName("ra");
      const [lockA, lockB] = [`${lock}-a`, `${lock}-b`];
      const topic = uniqueName("ra");
      const [e1, e2, e3, e4, e5, e6, e7, e8] = (await enqueue(h, [
        ...[1, 2, 3, 4, 5, 6].map((seq) => message(topic, seq)),
        message(topic, 7, "ra-key"),
        message(topic, 8),
      ])) as [string, string, string, string, string, string, string, string];
      const start = h.clock.now();
      const claim = async (claimer: string, limit: number, leaseMs: number, fence?: SettleContext["fence"]) =>
        idsOf(await h.store.claim({ claimer, limit, leaseMs, fence }));
      // Relay "a" claims twice under one token of its lock; relay "b#east" (a `#` in its id) under
      // another lock; "gone#1"'s lease runs out; "worker" has no `#`: the whole name is its relay.
      expect(await claim("a#1", 1, 80_000, { lock: lockA, token: 3n })).toEqual([e1]);
      expect(await claim("a#2", 2, 70_000, { lock: lockA, token: 3n })).toEqual([e2, e3]);
      expect(await claim("b#east#1", 1, 50_000, { lock: lockB, token: 7n })).toEqual([e4]);
      expect(await claim("gone#1", 1, 1_000)).toEqual([e5]);
      expect(await claim("worker", 3, 40_000)).toEqual([e6, e7, e8]);
      h.clock.advance(2_000);
      const retryAt = new Date(h.clock.now() + 30_000);
      await h.store.retry([{ id: e7, error: "<b>broker</b> said no", availableAt: retryAt }], ctx("worker"));
      h.clock.advance(1_000);
      const deadAt = new Date(h.clock.now());
      await h.store.deadLetter([{ id: e8, error: "poison message" }], ctx("worker"));
      h.clock.advance(1_000);
      const ackedAt = new Date(h.clock.now());
      // Relay "a" acks under a newer token of its lock: the newest token is the one to report.
      await h.store.ack([e2], ctx("a#2", { lock: lockA, token: 4n }));

      const report = await activity();
      expect(report.scanned, "scanned counts the pending entries looked at: 6 (one acked, one dead)").toBe(6);
      expect(
        report.fences,
        "fences holds the newest token the store recorded for each lock name (not the first), by lock name",
      ).toEqual([
        { lock: lockA, token: 4n },
        { lock: lockB, token: 7n },
      ]);
      expect(
        report.claimers,
        "claimers counts each relay's entries under an unexpired lease (claimer names up to their last '#' " +
          "grouped; expired leases, settled and retried entries not counted), with the latest lease end, by relay id",
      ).toEqual([
        { relay: "a", inFlight: 2, leaseUntil: new Date(start + 80_000) },
        { relay: "b#east", inFlight: 1, leaseUntil: new Date(start + 50_000) },
        { relay: "worker", inFlight: 1, leaseUntil: new Date(start + 40_000) },
      ]);
      expect(report.lastPublishedAt, "lastPublishedAt is the newest ack's time").toEqual(ackedAt);
      const retried = { id: e7, key: "ra-key", topic, error: "<b>broker</b> said no", attempts: 1 };
      const dead = { id: e8, key: null, topic, error: "poison message", attempts: 1 };
      expect(
        report.recentErrors,
        "recentErrors lists pending and dead entries with an error, newest `at` first (a pending entry's `at` is " +
          "its retry's due time, a dead one's when it was dead-lettered), their fields as stored",
      ).toEqual([
        { ...retried, at: retryAt, dead: false },
        { ...dead, at: deadAt, dead: true },
      ]);
      expect(
        (await activity({ recentErrors: 1 })).recentErrors.map((error) => error.id),
        "recentErrors returns at most `recentErrors` errors, the newest",
      ).toEqual([e7]);
      const bounded = await activity({ scanLimit: 2 });
      expect(
        [bounded.scanned, bounded.claimers, bounded.recentErrors.map((error) => error.id)],
        "with scanLimit 2 only the 2 oldest pending entries are looked at for leases and pending errors " +
          "(the newest dead entries still are)",
      ).toEqual([2, [{ relay: "a", inFlight: 2, leaseUntil: new Date(start + 80_000) }], [e8]]);
      expect(bounded.lastPublishedAt, "the newest 2 settled entries hold the ack").toEqual(ackedAt);
      h.clock.advance(100_000);
      expect((await activity()).claimers, "once every lease has ended no relay holds entries").toEqual([]);
    },
  },
} satisfies Record<string, Check<Harness>>;

export type StoreCheckId = keyof typeof storeChecks;

/**
 * The in-memory reference store as a harness: for suites that need *a* store, e.g. running the
 * relay suite over a lock backend under test.
 */
export async function memoryStoreHarness(clock: ManualClock): Promise<StoreHarness<MemoryTransaction>> {
  const store = new MemoryStore({ clock });
  return { store, clock, transaction: (work) => store.transaction(work), teardown: () => store.close() };
}

/** Registers the store conformance suite. Call it at the top level of a vitest test file. */
export function describeStoreConformance<Tx>(options: StoreConformanceOptions<Tx>): void {
  registerSuite<Harness, StoreCheckId>("store conformance", storeChecks, {
    name: options.name,
    create: async () => {
      const { ManualClock } = await import("@outbox/core");
      return (await options.create(new ManualClock())) as Harness;
    },
    dispose: (h) => h.teardown(),
    skip: options.skip,
    timeoutMs: options.timeoutMs ?? 60_000,
  });
}
