import {
  type ManualClock,
  MemoryStore,
  type MemoryTransaction,
  type OutboxEntry,
  OutboxError,
  OutboxErrorCode,
  type OutboxMessage,
  type OutboxStore,
  type SettleContext,
} from "@outbox/core";
import { expect } from "vitest";
import { type Check, registerSuite, type SkipReasons } from "./suite.js";
import { awkwardPayloads, bytesEqual, claimAndAckAll, deferred, keyOrderViolations, uniqueName } from "./util.js";

export interface StoreHarness<Tx> {
  /** A store created with `clock` and its own fresh namespace (table, collection, schema...). */
  readonly store: OutboxStore<Tx>;
  /** Runs `work` in a real transaction of the backend: commit on resolve, rollback on reject. */
  transaction<T>(work: (tx: Tx) => Promise<T>): Promise<T>;
  /** The clock the store was created with. */
  readonly clock: ManualClock;
  /** Drops the namespace and closes clients. */
  teardown(): Promise<void>;
}

export interface StoreConformanceOptions<Tx> {
  name: string;
  /** Builds a store on a fresh namespace, driven by the given manual clock. */
  create(clock: ManualClock): Promise<StoreHarness<Tx>>;
  skip?: SkipReasons<StoreCheckId>;
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

async function expectCode(promise: Promise<unknown>, code: OutboxErrorCode): Promise<void> {
  const error = await promise.then(
    () => null,
    (caught: unknown) => caught,
  );
  expect(error, `expected an OutboxError with code ${code}`).not.toBeNull();
  expect(OutboxError.is(error) ? error.code : error).toBe(code);
}

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
      expect(ids).toHaveLength(payloads.length);
      expect(new Set([...ids, defaultId]).size).toBe(payloads.length + 1);
      const claimed = await h.store.claim({ claimer: "c", limit: 100, leaseMs: 1000 });
      expect(claimed.map((e) => e.id)).toEqual([...ids, defaultId]);
      payloads.forEach((p, i) => {
        const entry = claimed[i] as OutboxEntry;
        expect(entry.payload).toBeInstanceOf(Uint8Array);
        expect(bytesEqual(entry.payload, p.bytes), `payload "${p.name}" altered`).toBe(true);
        expect(entry.headers).toEqual(headers);
        expect(entry.key).toBe(`k${i}`);
        expect(entry.topic).toBe(topic);
        expect(entry.idempotencyKey).toBe(`idem-${i}`);
        expect(entry.attempts).toBe(1);
        expect(entry.lastError).toBeNull();
        expect(entry.createdAt.getTime()).toBe(h.clock.now());
      });
      const last = claimed.at(-1) as OutboxEntry;
      expect(last.idempotencyKey).toBe(defaultId);
      expect(last.key).toBeNull();
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
        );
      }
      expect(await h.store.claim({ claimer: "c", limit: 10, leaseMs: 1000 })).toEqual([]);
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
      expect(await h.store.claim({ claimer: "c", limit: 10, leaseMs: 1000 })).toEqual([]);
      expect((await h.store.stats()).pending).toBe(0);
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
      expect(first.map(seqOf)).toEqual([0, 1, 2, 3]);
      expect(second.map(seqOf)).toEqual(Array.from({ length: 21 }, (_, i) => i + 4));
      expect([...first, ...second].map((e) => e.id)).toEqual(ids);
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
      const seen = new Map<string, string>();
      for (let round = 0; round < 10; round++) {
        const batches = await Promise.all(
          claimers.map((claimer) => h.store.claim({ claimer, limit: 7, leaseMs: 60_000 })),
        );
        batches.forEach((batch, i) => {
          for (const entry of batch) {
            expect(seen.get(entry.id), `entry ${entry.id} claimed twice`).toBeUndefined();
            seen.set(entry.id, claimers[i] as string);
          }
        });
      }
      expect(seen.size).toBe(200);
    },
  },
  "lease-expiry": {
    title: "entries become claimable again when their lease ends, with the attempt counted",
    async run(h) {
      await enqueue(h, message("lease", 1));
      const [first] = await h.store.claim({ claimer: "a", limit: 1, leaseMs: 5_000 });
      expect(first?.attempts).toBe(1);
      h.clock.advance(4_999);
      expect(await h.store.claim({ claimer: "b", limit: 1, leaseMs: 5_000 })).toEqual([]);
      h.clock.advance(1);
      const [again] = await h.store.claim({ claimer: "b", limit: 1, leaseMs: 5_000 });
      expect(again?.id).toBe(first?.id);
      expect(again?.attempts).toBe(2);
    },
  },
  "ack-idempotent": {
    title: "ack is idempotent and acked entries are never claimed again",
    async run(h) {
      const ids = await enqueue(h, [message("ack", 1), message("ack", 2)]);
      const claimed = await h.store.claim({ claimer: "a", limit: 10, leaseMs: 1_000 });
      expect(claimed).toHaveLength(2);
      await h.store.ack(ids, ctx("a"));
      await h.store.ack(ids, ctx("a"));
      await h.store.ack(["999999999"], ctx("a"));
      h.clock.advance(10_000);
      expect(await h.store.claim({ claimer: "b", limit: 10, leaseMs: 1_000 })).toEqual([]);
      expect((await h.store.stats()).pending).toBe(0);
    },
  },
  fencing: {
    title: "a claim or ack with a token older than the newest seen fails with OUTBOX_FENCED",
    async run(h) {
      const lock = uniqueName("leader");
      await enqueue(h, [message("fence", 1), message("fence", 2)]);
      const old = { lock, token: 5n };
      const [entry] = await h.store.claim({ claimer: "old", limit: 1, leaseMs: 1_000, fence: old });
      expect(entry).toBeDefined();
      // A newer leader shows up with a higher token.
      await h.store.claim({ claimer: "new", limit: 1, leaseMs: 1_000, fence: { lock, token: 6n } });
      await expectCode(h.store.ack([(entry as OutboxEntry).id], ctx("old", old)), OutboxErrorCode.Fenced);
      await expectCode(h.store.claim({ claimer: "old", limit: 1, leaseMs: 1_000, fence: old }), OutboxErrorCode.Fenced);
      await expectCode(
        h.store.retry(
          [{ id: (entry as OutboxEntry).id, error: "x", availableAt: new Date(h.clock.now()) }],
          ctx("old", old),
        ),
        OutboxErrorCode.Fenced,
      );
      // The rejected ack changed nothing: the entry is still pending.
      expect((await h.store.stats()).pending).toBe(2);
      // Equal or higher tokens pass; other lock names are independent.
      await h.store.ack([(entry as OutboxEntry).id], ctx("new", { lock, token: 6n }));
      await h.store.claim({ claimer: "x", limit: 1, leaseMs: 1, fence: { lock: `${lock}-other`, token: 1n } });
      expect((await h.store.stats()).pending).toBe(1);
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
      expect(await h.store.claim({ claimer: "a", limit: 1, leaseMs: 60_000 })).toEqual([]);
      h.clock.advance(1);
      const [again] = await h.store.claim({ claimer: "a", limit: 1, leaseMs: 60_000 });
      expect(again?.id).toBe(entry?.id);
      expect(again?.attempts).toBe(2);
      expect(again?.lastError).toBe("broker down");
      expect(again?.availableAt.getTime()).toBe(availableAt.getTime());
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
      expect(await h.store.claim({ claimer: "b", limit: 1, leaseMs: 60_000 })).toEqual([]);
      expect((await h.store.stats()).dead).toBe(0);
      await h.store.release([id], ctx("a"));
      const [again] = await h.store.claim({ claimer: "b", limit: 1, leaseMs: 60_000 });
      expect(again?.id).toBe(id);
      expect(again?.attempts).toBe(1);
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
      expect(dead.map((e) => e.id)).toEqual([id]);
      expect(dead[0]?.lastError).toBe("unroutable");
      expect((await h.store.stats()).dead).toBe(1);
      // A dead entry no longer holds back its key.
      const next = await h.store.claim({ claimer: "a", limit: 10, leaseMs: 60_000 });
      expect(next.map(seqOf)).toEqual([2]);
      await h.store.ack(
        next.map((e) => e.id),
        ctx("a"),
      );
      expect(await h.store.requeueDead([id as string])).toBe(1);
      const [requeued] = await h.store.claim({ claimer: "a", limit: 10, leaseMs: 60_000 });
      expect(requeued?.id).toBe(id);
      expect(requeued?.attempts).toBe(1);
      expect((await h.store.stats()).dead).toBe(0);
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
      expect(purged).toBe(2);
      const stats = await h.store.stats();
      expect(stats.dead).toBe(0);
      expect(stats.pending).toBe(1);
      // The pending entry (seq 3) survived, whatever its age.
      await h.store.release(
        recent.map((e) => e.id),
        ctx("a"),
      );
      const left = await claimAndAckAll(h.store as OutboxStore<never>, ctx("b"));
      expect(left.map((e) => e.id)).toEqual([ids[2]]);
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
      expect(
        await h.store.claim({ claimer: "q", limit: 5, leaseMs: 60_000 }),
        "never two claimers on one key: its later entries must not go to another claimer",
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
      expect(byOld.map(seqOf)).toEqual([1, 2, 3]);
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
      expect(byNew.map((e) => e.attempts)).toEqual([2, 2, 2]);
      expect(
        await h.store.claim({ claimer: "peer", limit: 10, leaseMs: 60_000, fence: fresh }),
        "a lease taken under the same token must be respected",
      ).toEqual([]);
      expect(
        await h.store.claim({ claimer: "x", limit: 10, leaseMs: 60_000, fence: { lock: `${lock}-other`, token: 99n } }),
        "a token of another lock must not take over",
      ).toEqual([]);
      const ids = byOld.map((e) => e.id);
      for (const settle of [
        () => h.store.ack(ids, ctx("old", old)),
        () =>
          h.store.retry([{ id: ids[0] as string, error: "x", availableAt: new Date(h.clock.now()) }], ctx("old", old)),
        () => h.store.deadLetter([{ id: ids[0] as string, error: "x" }], ctx("old", old)),
        () => h.store.release(ids, ctx("old", old)),
      ]) {
        await expectCode(settle(), OutboxErrorCode.Fenced);
      }
      const stats = await h.store.stats();
      expect({ pending: stats.pending, inFlight: stats.inFlight, dead: stats.dead }).toEqual({
        pending: 3,
        inFlight: 3,
        dead: 0,
      });
      await h.store.ack(ids, ctx("new", fresh));
      expect((await h.store.stats()).pending).toBe(0);
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
          expect(OutboxError.is(error, OutboxErrorCode.Fenced)).toBe(true);
          const details = (error as OutboxError).details;
          expect(details.lock).toBe(lock);
          expect(details.token).toBe(token.toString());
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
      expect(OutboxError.is(error, OutboxErrorCode.Fenced)).toBe(true);
      expect((error as OutboxError).details).toMatchObject({ lock, token: "3", newest: "21" });
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
      expect(published).toHaveLength(120);
      expect(keyOrderViolations(published)).toEqual([]);
    },
  },
  "late-commit": {
    title: "an entry committed after a later-enqueued one is still delivered (no sequence-gap loss)",
    async run(h) {
      const { promise: slowMayCommit, resolve: releaseSlow } = deferred();
      const { promise: slowHasEnqueued, resolve: slowEnqueued } = deferred();
      const slow = h.transaction(async (tx) => {
        await h.store.enqueue(tx, message("gap", 1));
        slowEnqueued();
        await slowMayCommit;
      });
      await slowHasEnqueued;
      await enqueue(h, message("gap", 2));
      const early = await claimAndAckAll(h.store as OutboxStore<never>, ctx("a"));
      expect(early.map(seqOf)).toEqual([2]);
      releaseSlow();
      await slow;
      const late = await claimAndAckAll(h.store as OutboxStore<never>, ctx("a"));
      expect(late.map(seqOf)).toEqual([1]);
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
      const stats = await h.store.stats();
      expect(stats).toEqual({ pending: 3, inFlight: 1, dead: 0, oldestPendingAt: new Date(start) });
      await h.store.ack([(first as OutboxEntry).id], ctx("a"));
      expect((await h.store.stats()).oldestPendingAt).toEqual(new Date(start + 1_000));
    },
  },
  "wake-ups": {
    title: "a committed enqueue delivers a wake-up to subscribers",
    requires: (h) => (h.store.capabilities.wakeUps ? null : "store declares wakeUps: false"),
    async run(h) {
      expect(typeof h.store.subscribe).toBe("function");
      const { promise: wake, resolve: woken } = deferred();
      const unsubscribe = await (h.store.subscribe as NonNullable<OutboxStore["subscribe"]>)(() => woken());
      try {
        await enqueue(h, message("wake", 1));
        const result = await Promise.race([
          wake.then(() => "woken"),
          new Promise((resolve) => setTimeout(resolve, 5_000, "timeout")),
        ]);
        expect(result).toBe("woken");
      } finally {
        await unsubscribe();
      }
    },
  },
  closed: {
    title: "after close, every operation fails with OUTBOX_CLOSED",
    async run(h) {
      await h.store.close();
      await expectCode(h.store.claim({ claimer: "a", limit: 1, leaseMs: 1 }), OutboxErrorCode.Closed);
      await expectCode(h.store.ack(["1"], ctx("a")), OutboxErrorCode.Closed);
      await expectCode(h.store.stats(), OutboxErrorCode.Closed);
      await expectCode(enqueue(h, message("closed", 1)), OutboxErrorCode.Closed);
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
