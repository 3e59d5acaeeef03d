// EXPERIMENTAL log-based capture on the real server (needs wal_level = logical: scripts/services.sh).
import {
  describeRelayConformance,
  describeStoreConformance,
  keyOrderViolations,
  type StoreHarness,
} from "@outbox/conformance";
import {
  type ManualClock,
  MemoryPublisher,
  type OutboxError,
  OutboxErrorCode,
  OutboxRelay,
  transientFailure,
} from "@outbox/core";
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
import { createPool, freshSchema, inTransaction, waitFor } from "./helpers.js";

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
});

// The kit, against log capture: the harness has no peer (one consumer per slot: a second store
// instance would take the slot over, so multi-claimer checks run on one instance).
describeStoreConformance({
  name: "store-postgres log capture (experimental, PostgreSQL 15)",
  create: harness,
  skip: {
    "wake-ups":
      "log capture: wake-ups come from the replication stream, which the first claim opens (it carries the leader's fence); a subscriber is woken from then on",
  },
});

describeRelayConformance({
  name: "store-postgres log capture (experimental, PostgreSQL 15)",
  createStore: harness,
  skip: {},
});
