// EXPERIMENTAL log-based capture on the real server (needs wal_level = logical: scripts/services.sh).
import {
  describeRelayConformance,
  describeStoreConformance,
  keyOrderViolations,
  type StoreHarness,
} from "@outbox/conformance";
import { type ManualClock, type OutboxError, OutboxErrorCode, OutboxRelay, transientFailure } from "@outbox/core";
import { MemoryPublisher } from "@outbox/memory";
import { afterAll, describe, expect, it } from "vitest";
import {
  createPostgresCaptureStore,
  dropCapture,
  migrate,
  migrateCapture,
  type PostgresCaptureStore,
  type PostgresCaptureStoreOptions,
  type Queryable,
  resolveCaptureNames,
} from "../src/index.js";
import { createPool, freshSchema, inTransaction, pgUrl, waitFor } from "./helpers.js";

const pool = createPool({ max: 12, application_name: "outbox-capture" });
afterAll(() => pool.end());

const seq = (m: { headers: Readonly<Record<string, string>> }) => Number(m.headers.seq);
const message = (n: number, key: string | null) => ({ topic: "t", key, payload: `p${n}`, headers: { seq: String(n) } });

/** A fresh schema with its publication and slot; `cleanup` drops them. */
async function captureSchema(): Promise<{ schema: string; cleanup(): Promise<void> }> {
  const schema = freshSchema();
  await migrate(pool, { schema });
  await migrateCapture(pool, { schema });
  return {
    schema,
    async cleanup() {
      const { slot } = resolveCaptureNames({ schema });
      // A store left open (a crash simulated by the test) may still hold the slot.
      await pool.query(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL",
        [slot],
      );
      await waitFor(
        async () =>
          (await pool.query("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active", [slot])).rowCount ===
          0,
        5_000,
        "the slot to be released",
      );
      await dropCapture(pool, { schema });
      await pool.query(`DROP SCHEMA "${schema}" CASCADE`);
    },
  };
}

function store(schema: string, options: Partial<PostgresCaptureStoreOptions> = {}): PostgresCaptureStore {
  return createPostgresCaptureStore({ pool, schema, onError: () => undefined, ...options });
}

async function harness(clock: ManualClock): Promise<StoreHarness<Queryable>> {
  const { schema, cleanup } = await captureSchema();
  // Claims see every commit before them (the kit enqueues, then claims at once).
  const s = store(schema, { clock, catchUpClaims: true });
  // Warm-up: the first claim opens the replication stream (a few hundred ms), before the check runs.
  await s.claim({ claimer: "warm-up", limit: 1, leaseMs: 1 });
  return {
    store: s,
    clock,
    transaction: (work) => inTransaction(pool, work),
    async teardown() {
      await s.close();
      await cleanup();
    },
  };
}

describe("log capture (experimental)", () => {
  it("migrateCapture is idempotent", async () => {
    const { schema, cleanup } = await captureSchema();
    try {
      await migrateCapture(pool, { schema });
      await Promise.all([migrateCapture(pool, { schema }), migrateCapture(pool, { schema })]);
      const { slot, publication } = resolveCaptureNames({ schema });
      const slots = await pool.query("SELECT plugin FROM pg_replication_slots WHERE slot_name = $1", [slot]);
      expect(slots.rows).toEqual([{ plugin: "pgoutput" }]);
      const pubs = await pool.query("SELECT pubinsert, pubupdate FROM pg_publication WHERE pubname = $1", [
        publication,
      ]);
      expect(pubs.rows).toEqual([{ pubinsert: true, pubupdate: false }]);
    } finally {
      await cleanup();
    }
  });

  it("delivers committed entries through the relay in commit order per key (not id order)", async () => {
    const { schema, cleanup } = await captureSchema();
    const s = store(schema);
    const broker = new MemoryPublisher();
    const relay = new OutboxRelay({ store: s, publisher: broker, pollMs: 10_000 });
    try {
      // Two transactions race on key "race": the lower id commits last, so it is published last.
      const early = await pool.connect();
      await early.query("BEGIN");
      const [lowId] = await s.enqueue(early, message(-1, "race"));
      const [highId] = await inTransaction(pool, (tx) => s.enqueue(tx, message(-2, "race")));
      await early.query("COMMIT");
      early.release();
      expect(BigInt(lowId as string)).toBeLessThan(BigInt(highId as string));

      relay.start();
      for (let from = 0; from < 300; from += 50) {
        await inTransaction(pool, (tx) =>
          s.enqueue(
            tx,
            Array.from({ length: 50 }, (_, i) => message(from + i, `k${(from + i) % 7}`)),
          ),
        );
      }
      // pollMs is 10 s: everything arrives through the stream's wake-ups.
      await waitFor(() => broker.messages.length >= 302, 15_000, "all 302 published");
      expect(broker.messages.filter((m) => m.key === "race").map((m) => m.entryId)).toEqual([highId, lowId]);
      const ordered = broker.messages.filter((m) => m.key !== "race").map((m) => ({ key: m.key, seq: seq(m) }));
      expect(ordered).toHaveLength(300);
      expect(keyOrderViolations(ordered)).toEqual([]);
      await relay.stop();
      await waitFor(async () => (await s.stats()).pending === 0, 5_000, "all acked in the table");
    } finally {
      await relay.stop();
      await s.close();
      await cleanup();
    }
  });

  it("a crash (store closed without acking) replays the unacked entries from the slot, not the acked ones", async () => {
    const { schema, cleanup } = await captureSchema();
    try {
      const first = store(schema);
      await inTransaction(pool, (tx) => first.enqueue(tx, [message(1, "a"), message(2, "b"), message(3, "a")]));
      await inTransaction(pool, (tx) => first.enqueue(tx, [message(4, null), message(5, "c")]));
      let claimed: Awaited<ReturnType<typeof first.claim>> = [];
      await waitFor(
        async () => {
          claimed = [...claimed, ...(await first.claim({ claimer: "one", limit: 10, leaseMs: 60_000 }))];
          return claimed.length === 5;
        },
        10_000,
        "5 claimed",
      );
      // Only entry 2 (key b) is acked; then the process "dies".
      const two = claimed.find((e) => seq(e) === 2);
      await first.ack([two?.id as string], { claimer: "one" });
      await first.close();

      const second = store(schema);
      const replayed: number[] = [];
      await waitFor(
        async () => {
          for (const e of await second.claim({ claimer: "two", limit: 10, leaseMs: 60_000 })) replayed.push(seq(e));
          return replayed.length >= 4;
        },
        10_000,
        "4 replayed",
      );
      expect(replayed.sort()).toEqual([1, 3, 4, 5]);
      const ids = (await second.stats()).pending;
      expect(ids).toBe(4);
      await second.close();
    } finally {
      await cleanup();
    }
  });

  it("a failing entry holds back only its key; its retry and dead letter go to the table", async () => {
    const { schema, cleanup } = await captureSchema();
    const s = store(schema);
    const broker = new MemoryPublisher({
      outcome: (entry) =>
        entry.key === "bad" ? transientFailure(new Error("broker says no")) : { status: "published" },
    });
    const relay = new OutboxRelay({
      store: s,
      publisher: broker,
      pollMs: 50,
      retry: { maxAttempts: 2, baseDelayMs: 200, maxDelayMs: 200 },
    });
    relay.on("error", () => undefined);
    try {
      relay.start();
      await inTransaction(pool, (tx) =>
        s.enqueue(
          tx,
          Array.from({ length: 40 }, (_, i) => message(i, i % 4 === 0 ? "bad" : `good${i % 4}`)),
        ),
      );
      await waitFor(() => broker.messages.length >= 30, 10_000, "the 30 good entries");
      expect(broker.messages.every((m) => m.key !== "bad")).toBe(true);
      // The head of "bad" is retried, then dead; each dead head lets the next one be tried.
      await waitFor(async () => (await s.stats()).dead >= 1, 10_000, "a dead letter");
      const [dead] = await s.listDead();
      expect(dead?.key).toBe("bad");
      expect(dead?.lastError).toContain("broker says no");
      expect(dead?.attempts).toBe(2);
    } finally {
      await relay.stop();
      await s.close();
      await cleanup();
    }
  });

  it("a key waiting for a long retry holds back the slot's position, not other keys: settled entries behind it do not count toward maxBuffered", async () => {
    const { schema, cleanup } = await captureSchema();
    const s = store(schema, { maxBuffered: 10 });
    const broker = new MemoryPublisher({
      outcome: (entry) =>
        entry.key === "bad" ? transientFailure(new Error("broker says no")) : { status: "published" },
    });
    const relay = new OutboxRelay({
      store: s,
      publisher: broker,
      pollMs: 50,
      retry: { maxAttempts: 5, baseDelayMs: 600_000, maxDelayMs: 600_000, jitter: 0 },
    });
    relay.on("error", () => undefined);
    try {
      relay.start();
      await inTransaction(pool, (tx) => s.enqueue(tx, [message(0, "bad")]));
      await waitFor(async () => (await s.stats()).pending === 1 && relay.metrics().retried === 1, 10_000, "the retry");
      // 100 entries of other keys, 10 per transaction: 10 times maxBuffered behind the waiting one.
      for (let t = 0; t < 10; t++) {
        await inTransaction(pool, (tx) =>
          s.enqueue(
            tx,
            Array.from({ length: 10 }, (_, i) => message(1 + t * 10 + i, `good${i % 3}`)),
          ),
        );
      }
      await waitFor(() => broker.messages.length >= 100, 10_000, "the 100 entries of other keys");
      expect(broker.messages.map(seq).sort((a, b) => a - b)).toEqual(Array.from({ length: 100 }, (_, i) => i + 1));
      // The last batch reaches the broker before its ack settles it: wait for the acks, not the broker.
      await waitFor(
        () => s.buffered === 1,
        10_000,
        "only the waiting entry to count as buffered once the rest is acked",
      );
    } finally {
      await relay.stop();
      await s.close();
      await cleanup();
    }
  });

  it("stats() says where the slot stands: the WAL an unsettled entry holds back, released once it is acked; a dropped slot reads as missing", async () => {
    const { schema, cleanup } = await captureSchema();
    const s = store(schema, { catchUpClaims: true });
    const { slot } = resolveCaptureNames({ schema });
    const currentLsn = async () => (await pool.query("SELECT pg_current_wal_lsn()::text AS lsn")).rows[0].lsn as string;
    const walSince = async (lsn: string) =>
      Number(
        (await pool.query("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::float8 AS bytes", [lsn])).rows[0]
          .bytes,
      );
    const capture = async () => {
      const stats = await s.stats();
      if (!stats.capture) throw new Error("no capture stats");
      return stats.capture;
    };
    try {
      expect(await capture()).toMatchObject({ source: slot, active: false, state: "reserved" });
      await inTransaction(pool, (tx) => s.enqueue(tx, [message(0, "held")]));
      const [held] = await s.claim({ claimer: "a", limit: 1, leaseMs: 60_000 });
      expect(held?.key).toBe("held");
      const before = await currentLsn();
      // 200 entries of other keys, published and acked while "held" stays unsettled.
      for (let t = 0; t < 10; t++) {
        await inTransaction(pool, (tx) =>
          s.enqueue(
            tx,
            Array.from({ length: 20 }, (_, i) => message(1 + t * 20 + i, `other${i % 4}`)),
          ),
        );
      }
      let acked = 0;
      while (acked < 200) {
        const claimed = await s.claim({ claimer: "a", limit: 50, leaseMs: 60_000 });
        await s.ack(
          claimed.map((entry) => entry.id),
          { claimer: "a" },
        );
        acked += claimed.length;
      }
      // The slot's confirmed position is still at or before "held": everything written since is lag.
      const written = await walSince(before);
      const holding = await capture();
      expect(holding.active).toBe(true);
      expect(holding.lagBytes).toBeGreaterThanOrEqual(written);
      expect(holding.retainedBytes).toBeGreaterThanOrEqual(holding.lagBytes ?? Number.POSITIVE_INFINITY);

      await s.ack([held?.id ?? ""], { claimer: "a" });
      const settled = await currentLsn();
      // Every claim (catchUpClaims) sends a marker through the slot, so the position can pass idle WAL.
      await waitFor(
        async () => {
          await s.claim({ claimer: "a", limit: 10, leaseMs: 60_000 });
          const { lagBytes } = await capture();
          return lagBytes !== null && lagBytes <= (await walSince(settled));
        },
        10_000,
        "the slot's position past everything settled",
      );

      await s.close();
      await dropCapture(pool, { schema });
      const after = store(schema);
      expect((await after.stats()).capture).toEqual({
        source: slot,
        active: false,
        state: "missing",
        lagBytes: null,
        retainedBytes: null,
      });
      await after.close();
    } finally {
      await s.close();
      await cleanup();
    }
  });

  it("pg_terminate_backend of the walsender: the stream restarts and nothing is lost", async () => {
    const { schema, cleanup } = await captureSchema();
    const s = store(schema);
    const broker = new MemoryPublisher();
    const relay = new OutboxRelay({ store: s, publisher: broker, pollMs: 100 });
    relay.on("error", () => undefined);
    const { slot } = resolveCaptureNames({ schema });
    try {
      relay.start();
      await inTransaction(pool, (tx) =>
        s.enqueue(
          tx,
          Array.from({ length: 50 }, (_, i) => message(i, `k${i % 5}`)),
        ),
      );
      await waitFor(() => broker.messages.length >= 50, 10_000, "the first 50");
      const killed = await pool.query(
        "SELECT pg_terminate_backend(active_pid) AS ok FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL",
        [slot],
      );
      expect(killed.rows).toEqual([{ ok: true }]);
      await inTransaction(pool, (tx) =>
        s.enqueue(
          tx,
          Array.from({ length: 50 }, (_, i) => message(50 + i, `k${i % 5}`)),
        ),
      );
      await waitFor(() => new Set(broker.messages.map(seq)).size === 100, 15_000, "all 100 after the kill");
      const firsts = new Map<number, { key: string | null; seq: number }>();
      for (const m of broker.messages) if (!firsts.has(seq(m))) firsts.set(seq(m), { key: m.key, seq: seq(m) });
      expect(keyOrderViolations([...firsts.values()])).toEqual([]);
      await waitFor(async () => (await s.stats()).pending === 0, 5_000, "all acked");
      // The slot's confirmed position moved with the acks.
      const { rows } = await pool.query(
        "SELECT confirmed_flush_lsn::text AS lsn FROM pg_replication_slots WHERE slot_name = $1",
        [slot],
      );
      expect(rows[0].lsn).not.toBe("0/0");
    } finally {
      await relay.stop();
      await s.close();
      await cleanup();
    }
  });

  it("a full buffer (maxBuffered) pauses the stream but not the claims: a claim does not wait for the rest of the log", async () => {
    const { schema, cleanup } = await captureSchema();
    const s = store(schema, { maxBuffered: 10 });
    try {
      // 3 transactions of 20: the first one alone fills the buffer, so the stream pauses after it.
      for (let t = 0; t < 3; t++) {
        await inTransaction(pool, (tx) =>
          s.enqueue(
            tx,
            Array.from({ length: 20 }, (_, i) => message(t * 20 + i, `k${i % 4}`)),
          ),
        );
      }
      const claimed: Awaited<ReturnType<typeof s.claim>> = [];
      const timed = async () => {
        const started = Date.now();
        const entries = await s.claim({ claimer: "c", limit: 100, leaseMs: 60_000 });
        return { entries, ms: Date.now() - started };
      };
      // The stream opens; what it delivers before pausing is served at once (catch-up stops at the
      // full buffer instead of waiting 5 s for a marker that sits behind the pause).
      let first = await timed();
      if (first.entries.length === 0) first = await timed();
      expect(first.entries.map(seq)).toEqual(Array.from({ length: 20 }, (_, i) => i));
      expect(first.ms).toBeLessThan(4_500); // the catch-up would have given up at 5 s
      claimed.push(...first.entries);
      // Everything held is leased and the stream is paused: nothing to serve, and no wait either.
      const empty = await timed();
      expect(empty.entries).toEqual([]);
      expect(empty.ms).toBeLessThan(2_000);
      // Acks make room: the stream resumes and the rest arrives, in commit order per key.
      await s.ack(
        first.entries.map((e) => e.id),
        { claimer: "c" },
      );
      await waitFor(
        async () => {
          const entries = await s.claim({ claimer: "c", limit: 100, leaseMs: 60_000 });
          claimed.push(...entries);
          if (entries.length > 0)
            await s.ack(
              entries.map((e) => e.id),
              { claimer: "c" },
            );
          return claimed.length >= 60;
        },
        10_000,
        "all 60 claimed",
      );
      expect(claimed.map(seq).sort((a, b) => a - b)).toEqual(Array.from({ length: 60 }, (_, i) => i));
      expect(keyOrderViolations(claimed.map((e) => ({ key: e.key, seq: seq(e) })))).toEqual([]);
    } finally {
      await s.close();
      await cleanup();
    }
  });

  it("catchUpClaims with a backlog larger than maxBuffered: the relay drains it", async () => {
    const { schema, cleanup } = await captureSchema();
    const s = store(schema, { maxBuffered: 10, catchUpClaims: true });
    const broker = new MemoryPublisher();
    const relay = new OutboxRelay({ store: s, publisher: broker, pollMs: 50 });
    relay.on("error", () => undefined);
    try {
      for (let t = 0; t < 3; t++) {
        await inTransaction(pool, (tx) =>
          s.enqueue(
            tx,
            Array.from({ length: 20 }, (_, i) => message(t * 20 + i, `k${i % 4}`)),
          ),
        );
      }
      relay.start();
      await waitFor(() => broker.messages.length >= 60, 10_000, "all 60 published");
      const published = broker.messages.map((m) => ({ key: m.key, seq: seq(m) }));
      expect(keyOrderViolations(published)).toEqual([]);
    } finally {
      await relay.stop();
      await s.close();
      await cleanup();
    }
  });

  it("dropCapture refuses a slot still in use (nothing dropped) and drops one its consumer just released", async () => {
    const { schema, cleanup } = await captureSchema();
    const s = store(schema);
    const { slot, publication } = resolveCaptureNames({ schema });
    const exists = async () => ({
      slot: (await pool.query("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", [slot])).rowCount,
      publication: (await pool.query("SELECT 1 FROM pg_publication WHERE pubname = $1", [publication])).rowCount,
    });
    try {
      await s.claim({ claimer: "c", limit: 1, leaseMs: 1_000 }); // opens the stream: the slot is active
      const error = await dropCapture(pool, { schema }).then(
        () => null,
        (e: OutboxError) => e,
      );
      expect(error?.code).toBe(OutboxErrorCode.StoreUnavailable);
      expect(error?.message).toContain("in use");
      expect(await exists()).toEqual({ slot: 1, publication: 1 });
      // Closed a moment ago (its walsender may not have exited yet): waited for, then dropped.
      await s.close();
      await dropCapture(pool, { schema });
      expect(await exists()).toEqual({ slot: 0, publication: 0 });
    } finally {
      await s.close();
      await cleanup();
    }
  });

  it("a stream whose oldest entry stays unsettled still answers the server (no wal_sender_timeout)", async () => {
    const { schema, cleanup } = await captureSchema();
    const errors: OutboxError[] = [];
    // A short timeout on this walsender only (the setting is per connection); status updates go every 5 s.
    const replication = { connectionString: pgUrl, options: "-c wal_sender_timeout=8000" };
    const s = store(schema, { replication, onError: (error) => errors.push(error) });
    const { slot } = resolveCaptureNames({ schema });
    const walsender = async () =>
      (await pool.query("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", [slot])).rows[0]
        ?.active_pid as number | null;
    try {
      await inTransaction(pool, (tx) => s.enqueue(tx, message(1, "a")));
      // Claimed and never settled (a broker that is down): nothing is confirmed in this stream.
      await waitFor(
        async () => (await s.claim({ claimer: "c", limit: 1, leaseMs: 60_000 })).length === 1,
        10_000,
        "the entry claimed",
      );
      const pid = await walsender();
      expect(pid).not.toBeNull();
      await new Promise((resolve) => setTimeout(resolve, 12_000));
      expect(errors.map((e) => e.message)).toEqual([]);
      expect(await walsender()).toBe(pid);
    } finally {
      await s.close();
      await cleanup();
    }
  }, 30_000);

  it("a newer fencing token takes the slot over; the deposed holder's acks are refused", async () => {
    const { schema, cleanup } = await captureSchema();
    const old = store(schema);
    const next = store(schema);
    const lock = "capture-leader";
    try {
      await inTransaction(pool, (tx) => old.enqueue(tx, [message(1, "a"), message(2, "b")]));
      let held: Awaited<ReturnType<typeof old.claim>> = [];
      await waitFor(
        async () => {
          held = [
            ...held,
            ...(await old.claim({ claimer: "old", limit: 10, leaseMs: 60_000, fence: { lock, token: 1n } })),
          ];
          return held.length === 2;
        },
        10_000,
        "the old leader's claim",
      );
      // The old holder "freezes" with the slot open; the new leader takes over at once.
      const taken: number[] = [];
      await waitFor(
        async () => {
          const fence = { lock, token: 2n };
          for (const e of await next.claim({ claimer: "new", limit: 10, leaseMs: 60_000, fence })) taken.push(seq(e));
          return taken.length === 2;
        },
        10_000,
        "the new leader's claim",
      );
      expect(taken.sort()).toEqual([1, 2]);
      const error = await old
        .ack(
          held.map((e) => e.id),
          { claimer: "old", fence: { lock, token: 1n } },
        )
        .then(
          () => null,
          (e: OutboxError) => e,
        );
      expect(error?.code).toBe(OutboxErrorCode.Fenced);
      expect((await next.stats()).pending).toBe(2);
    } finally {
      await old.close();
      await next.close();
      await cleanup();
    }
  });

  it("a store that takes the slot back checks what it still holds against the table: nothing another leader settled is served again", async () => {
    const { schema, cleanup } = await captureSchema();
    const errorsOfA: OutboxError[] = [];
    const a = store(schema, { onError: (error) => errorsOfA.push(error) });
    const b = store(schema);
    const lock = "capture-leader";
    const claimBoth = async (s: PostgresCaptureStore, claimer: string, token: bigint) => {
      let got: Awaited<ReturnType<typeof s.claim>> = [];
      await waitFor(
        async () => {
          got = [...got, ...(await s.claim({ claimer, limit: 10, leaseMs: 60_000, fence: { lock, token } }))];
          return got.length === 2;
        },
        10_000,
        `${claimer}'s claim`,
      );
      return got;
    };
    try {
      await inTransaction(pool, (tx) => a.enqueue(tx, [message(1, "a"), message(2, "b")]));
      // A leads (token 1): it claims both and gives them back, so it holds them, ready.
      const held = await claimBoth(a, "a", 1n);
      await a.release(
        held.map((e) => e.id),
        { claimer: "a", fence: { lock, token: 1n } },
      );
      // B leads (token 2): it takes the slot over (A's stream ends), publishes both and acks them.
      const taken = await claimBoth(b, "b", 2n);
      await b.ack(
        taken.map((e) => e.id),
        { claimer: "b", fence: { lock, token: 2n } },
      );
      await waitFor(() => errorsOfA.length > 0, 5_000, "A's stream to end");
      // A leads again (token 3) and takes the slot back: what it held was settled meanwhile.
      const again = await a.claim({ claimer: "a", limit: 10, leaseMs: 60_000, fence: { lock, token: 3n } });
      expect(again.map(seq)).toEqual([]);
      expect((await a.stats()).pending).toBe(0);
    } finally {
      await a.close();
      await b.close();
      await cleanup();
    }
  });
});

// The kit, against log capture: the harness has no peer (one consumer per slot: a second store
// instance would take the slot over, so multi-claimer checks run on one instance). Wake-ups come
// from the replication stream, which the first claim opens: the harness's warm-up claim has.
describeStoreConformance({
  name: "store-postgres log capture (experimental, PostgreSQL 15)",
  create: harness,
  skip: {},
});

describeRelayConformance({
  name: "store-postgres log capture (experimental, PostgreSQL 15)",
  createStore: harness,
  skip: {},
});
