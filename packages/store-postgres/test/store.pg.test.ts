import { readFile } from "node:fs/promises";
import { keyOrderViolations } from "@outbox/conformance";
import {
  heldBack,
  KeyFailures,
  ManualClock,
  type OutboxEntry,
  OutboxError,
  OutboxErrorCode,
  type OutboxMessage,
  OutboxRelay,
  type PublishOutcome,
  published,
  transientFailure,
} from "@outbox/core";
import { MemoryPublisher } from "@outbox/memory";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import { createPostgresStore, migrate, schemaSql } from "../src/index.js";
import { createPool, freshSchema, inTransaction, pgUrl, terminateBackends, waitFor } from "./helpers.js";

const admin = createPool({ max: 4, application_name: "outbox-test-admin" });
afterAll(() => admin.end());

async function setup(options: { pool?: pg.Pool; clock?: ManualClock } = {}) {
  const pool = options.pool ?? admin;
  const schema = freshSchema();
  await migrate(pool, { schema });
  const errors: OutboxError[] = [];
  const store = createPostgresStore({ pool, schema, clock: options.clock, onError: (e) => errors.push(e) });
  return {
    store,
    schema,
    errors,
    async cleanup() {
      await store.close();
      await admin.query(`DROP SCHEMA "${schema}" CASCADE`);
    },
  };
}

const seqOf = (entry: { headers: Readonly<Record<string, string>> }) => Number(entry.headers.seq);

function messages(count: number, keys: number, from = 0): OutboxMessage[] {
  return Array.from({ length: count }, (_, i) => ({
    topic: "t",
    key: keys > 0 ? `key-${(from + i) % keys}` : null,
    payload: `entry-${from + i}`,
    headers: { seq: String(from + i) },
  }));
}

async function codeOf(promise: Promise<unknown>): Promise<string | undefined> {
  const error = await promise.then(
    () => undefined,
    (caught: unknown) => caught,
  );
  if (error === undefined) return undefined;
  return OutboxError.is(error) ? error.code : String(error);
}

describe("schema and configuration", () => {
  it("rejects identifiers that are not plain names (no SQL injection through configuration)", () => {
    for (const bad of ['x"; DROP TABLE y; --', "a b", "", "1abc", "x".repeat(64), "tab.le"]) {
      expect(() => createPostgresStore({ pool: admin, table: bad }), bad).toThrow(
        expect.objectContaining({ code: OutboxErrorCode.InvalidOptions }),
      );
      expect(() => schemaSql({ schema: bad })).toThrow(
        expect.objectContaining({ code: OutboxErrorCode.InvalidOptions }),
      );
    }
    expect(() => createPostgresStore({ pool: admin, notifyChannel: "a'b" })).toThrow(
      expect.objectContaining({ code: OutboxErrorCode.InvalidOptions }),
    );
    expect(() => createPostgresStore({} as never)).toThrow(
      expect.objectContaining({ code: OutboxErrorCode.InvalidOptions }),
    );
  });

  it("works with mixed-case schema and table names (quoted everywhere)", async () => {
    const schema = `Mixed_${freshSchema()}`;
    const table = "Outbox_Events";
    await migrate(admin, { schema, table });
    const store = createPostgresStore({ pool: admin, schema, table, onError: () => undefined });
    try {
      const ids = await inTransaction(admin, (tx) => store.enqueue(tx, messages(3, 1)));
      const claimed = await store.claim({ claimer: "c", limit: 10, leaseMs: 1_000 });
      expect(claimed.map((e) => e.id)).toEqual(ids);
      const { rows } = await admin.query(`SELECT count(*)::int AS n FROM "${schema}"."${table}"`);
      expect(rows[0].n).toBe(3);
    } finally {
      await store.close();
      await admin.query(`DROP SCHEMA "${schema}" CASCADE`);
    }
  });

  it("migrate is idempotent and safe to run concurrently", async () => {
    const schema = freshSchema();
    try {
      await Promise.all([migrate(admin, { schema }), migrate(admin, { schema }), migrate(admin, { schema })]);
      await migrate(admin, { schema });
      const { rows } = await admin.query(
        "SELECT indexname FROM pg_indexes WHERE schemaname = $1 AND tablename = 'outbox' ORDER BY 1",
        [schema],
      );
      expect(rows.map((r) => r.indexname)).toEqual([
        "outbox_dead_idx",
        "outbox_open_key_idx",
        "outbox_pending_idx",
        "outbox_pkey",
        "outbox_settled_idx",
      ]);
    } finally {
      await admin.query(`DROP SCHEMA "${schema}" CASCADE`);
    }
  });

  it("a hand-written INSERT of topic, key and payload is an entry the relay claims", async () => {
    // The column defaults stamp the entry with the server's now(), in microseconds; the store's
    // clock reads whole milliseconds, so a claim in the same millisecond would still see the entry
    // as not yet available. The clock starts a second ahead of the server.
    const { store, schema, cleanup } = await setup({ clock: new ManualClock(Date.now() + 1_000) });
    try {
      await admin.query(`INSERT INTO "${schema}".outbox (topic, key, payload) VALUES ('orders', 'k1', 'hello')`);
      const [entry] = await store.claim({ claimer: "a", limit: 10, leaseMs: 60_000 });
      expect(entry).toMatchObject({ topic: "orders", key: "k1", headers: {}, attempts: 1 });
      expect(new TextDecoder().decode(entry?.payload)).toBe("hello");
      expect(entry?.idempotencyKey).toBe(entry?.id);
    } finally {
      await cleanup();
    }
  });

  it("ships sql/schema.sql, identical to schemaSql() for the default names", async () => {
    const shipped = await readFile(new URL("../sql/schema.sql", import.meta.url), "utf8");
    expect(shipped).toBe(schemaSql());
  });
});

describe("enqueue", () => {
  it("round-trips header values with U+0000 and rejects U+0000 in text columns", async () => {
    const { store, cleanup } = await setup();
    try {
      const headers = { nul: "a\u0000b", emoji: "🚀", quote: '"\\', empty: "" };
      await inTransaction(admin, (tx) => store.enqueue(tx, { topic: "t", payload: "p", headers }));
      const [entry] = await store.claim({ claimer: "c", limit: 1, leaseMs: 1_000 });
      expect(entry?.headers).toEqual(headers);
      for (const bad of [
        { topic: "t\u0000", payload: "x" },
        { topic: "t", key: "k\u0000", payload: "x" },
        { topic: "t", idempotencyKey: "\u0000", payload: "x" },
      ]) {
        expect(
          await codeOf(inTransaction(admin, (tx) => store.enqueue(tx, [{ topic: "t", payload: "ok" }, bad]))),
        ).toBe(OutboxErrorCode.InvalidEntry);
      }
      expect((await store.stats()).pending).toBe(1);
    } finally {
      await cleanup();
    }
  });

  it("works with a pg Client inside BEGIN, and a store whose db is a single Client", async () => {
    const client = new pg.Client({ connectionString: pgUrl });
    await client.connect();
    const schema = freshSchema();
    await migrate(client, { schema });
    const store = createPostgresStore({ db: client, schema, onError: () => undefined });
    try {
      expect(store.capabilities.wakeUps).toBe(false);
      // Other connections may write while this one claims: only PGlite is one writer at a time.
      expect(store.capabilities.concurrentWriters).toBe(true);
      await client.query("BEGIN");
      const ids = await store.enqueue(client, messages(2, 0));
      await client.query("ROLLBACK");
      await client.query("BEGIN");
      const kept = await store.enqueue(client, messages(2, 0));
      await client.query("COMMIT");
      expect(ids).toHaveLength(2);
      const claimed = await store.claim({ claimer: "c", limit: 10, leaseMs: 1_000 });
      expect(claimed.map((e) => e.id)).toEqual(kept);
      await store.ack(kept, { claimer: "c" });
      expect((await store.stats()).pending).toBe(0);
    } finally {
      await store.close();
      await client.query(`DROP SCHEMA "${schema}" CASCADE`);
      await client.end();
    }
  });

  it("inserts thousands of entries in one statement, ids in message order", async () => {
    const { store, schema, cleanup } = await setup();
    try {
      const batch = messages(5_000, 7);
      const ids = await inTransaction(admin, (tx) => store.enqueue(tx, batch));
      expect(ids).toHaveLength(5_000);
      const { rows } = await admin.query(`SELECT id::text AS id, headers->>'seq' AS seq FROM "${schema}".outbox`);
      const seqById = new Map(rows.map((r) => [r.id as string, Number(r.seq)]));
      ids.forEach((id, i) => {
        expect(seqById.get(id)).toBe(i);
      });
      expect(ids.map(BigInt)).toEqual([...ids.map(BigInt)].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)));
    } finally {
      await cleanup();
    }
  });

  it("sends one NOTIFY per enqueue statement, delivered at commit", async () => {
    const { store, cleanup } = await setup();
    const listener = new pg.Client({ connectionString: pgUrl });
    await listener.connect();
    const received: number[] = [];
    listener.on("notification", () => received.push(Date.now()));
    try {
      await listener.query(`LISTEN "outbox:${store.names.schema}.outbox"`);
      let committedAt = 0;
      await inTransaction(admin, async (tx) => {
        await store.enqueue(tx, messages(500, 10));
        await new Promise((resolve) => setTimeout(resolve, 100));
        expect(received).toHaveLength(0);
        committedAt = Date.now();
      });
      await waitFor(() => received.length >= 1, 5_000, "the notification");
      await new Promise((resolve) => setTimeout(resolve, 100));
      expect(received).toHaveLength(1);
      expect(received[0]).toBeGreaterThanOrEqual(committedAt);
      // A rolled-back enqueue notifies nobody.
      await inTransaction(admin, async (tx) => {
        await store.enqueue(tx, messages(1, 0));
        throw new Error("rollback");
      }).catch(() => undefined);
      await new Promise((resolve) => setTimeout(resolve, 100));
      expect(received).toHaveLength(1);
    } finally {
      await listener.end();
      await cleanup();
    }
  });
});

describe("concurrency on real connections", () => {
  it("delivers a lower id committed late, with two real connections (no sequence-gap loss)", async () => {
    const pool = createPool({ max: 4 });
    const { store, cleanup } = await setup({ pool });
    try {
      const slow = await pool.connect();
      await slow.query("BEGIN");
      const [lowId] = await store.enqueue(slow, { topic: "t", payload: "late", headers: { seq: "1" } });
      const [highId] = await inTransaction(pool, (tx) =>
        store.enqueue(tx, { topic: "t", payload: "early", headers: { seq: "2" } }),
      );
      expect(BigInt(lowId as string) < BigInt(highId as string)).toBe(true);
      const early = await store.claim({ claimer: "c", limit: 10, leaseMs: 60_000 });
      expect(early.map((e) => e.id)).toEqual([highId]);
      await store.ack([highId as string], { claimer: "c" });
      await slow.query("COMMIT");
      slow.release();
      const late = await store.claim({ claimer: "c", limit: 10, leaseMs: 60_000 });
      expect(late.map((e) => e.id)).toEqual([lowId]);
    } finally {
      await cleanup();
      await pool.end();
    }
  });

  it("8 connections hammering claims never share a key and keep per-key order", async () => {
    const pool = createPool({ max: 8 });
    const { store, cleanup } = await setup({ pool });
    try {
      await inTransaction(pool, (tx) => store.enqueue(tx, messages(1_200, 12)));
      const owners = new Map<string, string>();
      const publishedOrder: Array<{ key: string | null; seq: number }> = [];
      const violations: string[] = [];
      let random = 1;
      const next = () => {
        random = (random * 48271) % 2147483647;
        return random / 2147483647;
      };
      await Promise.all(
        Array.from({ length: 8 }, async (_, worker) => {
          const claimer = `w${worker}`;
          for (let round = 0; round < 2_000 && publishedOrder.length < 1_200; round++) {
            const batch = await store.claim({ claimer, limit: 5, leaseMs: 60_000 });
            const keys = new Set(batch.map((entry) => entry.key as string));
            for (const key of keys) {
              const owner = owners.get(key);
              if (owner !== undefined) violations.push(`${key} claimed by ${claimer} while ${owner} holds it`);
              owners.set(key, claimer);
            }
            if (batch.length === 0) {
              await new Promise((resolve) => setTimeout(resolve, 2));
              continue;
            }
            // Like a relay after a failure mid-run: ack a prefix of each key's run, release the rest.
            const cut = new Map([...keys].map((key) => [key, next() < 0.3]));
            const acked: OutboxEntry[] = [];
            for (const entry of batch) {
              if (cut.get(entry.key as string)) continue;
              if (next() < 0.3) cut.set(entry.key as string, true);
              else acked.push(entry);
            }
            const back = batch.filter((entry) => !acked.includes(entry));
            // Forget them before settling: a claim may see them right after the commit.
            for (const key of keys) owners.delete(key);
            publishedOrder.push(...acked.map((e) => ({ key: e.key, seq: seqOf(e) })));
            await Promise.all([
              store.ack(
                acked.map((e) => e.id),
                { claimer },
              ),
              store.release(
                back.map((e) => e.id),
                { claimer },
              ),
            ]);
          }
        }),
      );
      expect(violations).toEqual([]);
      expect(publishedOrder).toHaveLength(1_200);
      expect(keyOrderViolations(publishedOrder)).toEqual([]);
    } finally {
      await cleanup();
      await pool.end();
    }
  });

  it("four relays on real time, each with its own pool, keep per-key order with a flaky broker", async () => {
    const pools = Array.from({ length: 4 }, () => createPool({ max: 3 }));
    const { store: producer, schema, cleanup } = await setup();
    const stores = pools.map((pool) => createPostgresStore({ pool, schema, onError: () => undefined }));
    const delivered: Array<{ key: string | null; seq: number }> = [];
    const inFlight = new Set<string>();
    const violations: string[] = [];
    let random = 7;
    const next = () => {
      random = (random * 48271) % 2147483647;
      return random / 2147483647;
    };
    const publisher = {
      async publish(entries: readonly OutboxEntry[]): Promise<PublishOutcome[]> {
        const keys = new Set(entries.flatMap((entry) => (entry.key ? [entry.key] : [])));
        for (const key of keys) {
          if (inFlight.has(key)) violations.push(`${key} published concurrently`);
          inFlight.add(key);
        }
        await new Promise((resolve) => setTimeout(resolve, next() * 5));
        for (const key of keys) inFlight.delete(key);
        // The run contract: after a failure, the rest of that key's run is held back.
        const failed = new KeyFailures();
        return entries.map((entry) => {
          if (failed.blocked(entry)) return heldBack(entry);
          if (next() < 0.15) {
            failed.fail(entry);
            return transientFailure(new Error("flaky"));
          }
          delivered.push({ key: entry.key, seq: Number(entry.id) });
          return published();
        });
      },
    };
    const relays = stores.map(
      (store) =>
        new OutboxRelay({ store, publisher, pollMs: 20, batchSize: 16, retry: { baseDelayMs: 5, maxDelayMs: 20 } }),
    );
    try {
      for (const relay of relays) relay.start();
      // Producers commit one after the other (concurrent producers would make "enqueue order"
      // of one key ambiguous) while the relays drain.
      for (let i = 0; i < 8; i++) {
        await inTransaction(admin, (tx) => producer.enqueue(tx, messages(100, 10, i * 100)));
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      await waitFor(() => new Set(delivered.map((d) => d.seq)).size >= 800, 60_000, "800 deliveries");
      expect(violations).toEqual([]);
      const firsts = new Map<number, { key: string | null; seq: number }>();
      for (const d of delivered) if (!firsts.has(d.seq)) firsts.set(d.seq, d);
      expect(keyOrderViolations([...firsts.values()])).toEqual([]);
    } finally {
      await Promise.all(relays.map((relay) => relay.stop()));
      await Promise.all(stores.map((store) => store.close()));
      await cleanup();
      await Promise.all(pools.map((pool) => pool.end()));
    }
  });
});

describe("wake-ups", () => {
  it("an enqueue is published well within the poll interval thanks to NOTIFY (pollMs 60 s)", async () => {
    const pool = createPool({ max: 4 });
    const { store, cleanup } = await setup({ pool });
    const broker = new MemoryPublisher();
    const relay = new OutboxRelay({ store, publisher: broker, pollMs: 60_000 });
    try {
      relay.start();
      await waitFor(() => relay.metrics().cycles >= 1, 5_000, "the first (empty) cycle");
      await new Promise((resolve) => setTimeout(resolve, 200));
      const latencies: number[] = [];
      for (let i = 0; i < 5; i++) {
        const before = broker.messages.length;
        const start = performance.now();
        await inTransaction(pool, (tx) => store.enqueue(tx, { topic: "t", payload: `wake-${i}` }));
        await waitFor(() => broker.messages.length > before, 10_000, "the wake-up publish");
        latencies.push(performance.now() - start);
      }
      console.log(`NOTIFY wake-up latency (commit -> published), ms: ${latencies.map((l) => l.toFixed(1)).join(", ")}`);
      // The poll is 60 s: any latency far below it is the NOTIFY wake-up at work. The bound
      // leaves room for a loaded CI machine; the logged figures are the measurement.
      expect(Math.max(...latencies)).toBeLessThan(5_000);
    } finally {
      await relay.stop();
      await cleanup();
      await pool.end();
    }
  });

  it("survives pg_terminate_backend on the LISTEN connection: reconnects and wakes up again", async () => {
    const pool = createPool({ max: 4, application_name: "outbox-listen-kill" });
    const { store, errors, cleanup } = await setup({ pool });
    const broker = new MemoryPublisher();
    const relay = new OutboxRelay({ store, publisher: broker, pollMs: 60_000 });
    try {
      relay.start();
      await waitFor(async () => {
        const { rows } = await admin.query(
          "SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1 AND query LIKE 'LISTEN%'",
          ["outbox-listen-kill"],
        );
        return rows[0].n === 1;
      });
      expect(await terminateBackends(admin, "outbox-listen-kill", "LISTEN%")).toBe(1);
      await waitFor(() => errors.length > 0, 5_000, "the listener error report");
      expect(errors[0]?.code).toBe(OutboxErrorCode.StoreUnavailable);
      await waitFor(
        async () => {
          const { rows } = await admin.query(
            "SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1 AND query LIKE 'LISTEN%'",
            ["outbox-listen-kill"],
          );
          return rows[0].n === 1;
        },
        10_000,
        "the LISTEN connection to come back",
      );
      const start = performance.now();
      await inTransaction(pool, (tx) => store.enqueue(tx, { topic: "t", payload: "after reconnect" }));
      await waitFor(() => broker.messages.length === 1, 10_000, "the wake-up publish after reconnection");
      expect(performance.now() - start).toBeLessThan(5_000); // poll is 60 s: this was the wake-up
    } finally {
      await relay.stop();
      await cleanup();
      await pool.end();
    }
  });
});

describe("connection loss", () => {
  it("survives pg_terminate_backend on the relay's connections, reports errors, then publishes again", async () => {
    const pool = createPool({ max: 4, application_name: "outbox-relay-kill" });
    const { store, cleanup } = await setup({ pool });
    const broker = new MemoryPublisher();
    // A claim whose connection dies after its commit leaves its entries leased: keep leases short.
    const relay = new OutboxRelay({ store, publisher: broker, pollMs: 20, batchSize: 50, leaseMs: 2_000 });
    const relayErrors: unknown[] = [];
    relay.on("error", ({ error }) => relayErrors.push(error));
    try {
      relay.start();
      await inTransaction(admin, (tx) => store.enqueue(tx, messages(500, 5)));
      // Kill every connection of the relay's pool, repeatedly, while it drains.
      let killed = 0;
      for (let i = 0; i < 20; i++) {
        killed += await terminateBackends(admin, "outbox-relay-kill");
        await new Promise((resolve) => setTimeout(resolve, 15));
      }
      expect(killed).toBeGreaterThan(0);
      await inTransaction(admin, (tx) => store.enqueue(tx, messages(100, 5, 500)));
      await waitFor(() => new Set(broker.messages.map(seqOf)).size === 600, 30_000, "all 600 entries");
      for (const error of relayErrors) {
        if (OutboxError.is(error)) expect(error.code).toBe(OutboxErrorCode.StoreUnavailable);
      }
      // An ack whose every attempt lost its connection leaves a published batch leased: it is
      // published again after the lease (a duplicate, allowed). First deliveries keep key order.
      const firsts = new Map(broker.messages.map((m) => [seqOf(m), m] as const).reverse());
      const firstDeliveries = broker.messages.filter((m) => firsts.get(seqOf(m)) === m);
      expect(keyOrderViolations(firstDeliveries.map((m) => ({ key: m.key, seq: seqOf(m) })))).toEqual([]);
      console.log(`connections killed: ${killed}, relay error events: ${relayErrors.length}`);
    } finally {
      await relay.stop();
      await cleanup();
      await pool.end();
    }
  });

  it("an idle pooled connection dying does not crash the process (the store handles the pool's error event)", async () => {
    const pool = new pg.Pool({ connectionString: pgUrl, max: 2, application_name: "outbox-idle-kill" });
    const { store, errors, cleanup } = await setup({ pool });
    try {
      await store.stats();
      expect(await terminateBackends(admin, "outbox-idle-kill")).toBeGreaterThan(0);
      await waitFor(() => errors.length > 0, 5_000, "the idle error report");
      expect(errors[0]?.code).toBe(OutboxErrorCode.StoreUnavailable);
      expect((await store.stats()).pending).toBe(0);
    } finally {
      await cleanup();
      pool.on("error", () => undefined);
      await pool.end();
    }
  });

  it("fails with OUTBOX_STORE_UNAVAILABLE when the server cannot be reached, OUTBOX_CLOSED after close", async () => {
    const pool = new pg.Pool({ connectionString: "postgres://postgres:postgres@127.0.0.1:1/none", max: 1 });
    const store = createPostgresStore({ pool, onError: () => undefined });
    expect(await codeOf(store.claim({ claimer: "c", limit: 1, leaseMs: 1_000 }))).toBe(
      OutboxErrorCode.StoreUnavailable,
    );
    expect(await codeOf(store.stats())).toBe(OutboxErrorCode.StoreUnavailable);
    await store.close();
    expect(await codeOf(store.claim({ claimer: "c", limit: 1, leaseMs: 1_000 }))).toBe(OutboxErrorCode.Closed);
    expect(await codeOf(store.purge({ olderThan: new Date() }))).toBe(OutboxErrorCode.Closed);
    await pool.end();
  });
});

describe("retention and dead letters", () => {
  it("purges in bounded batches and never touches pending entries", async () => {
    const clock = new ManualClock();
    const { store, schema, cleanup } = await setup({ clock });
    try {
      const ids = await inTransaction(admin, (tx) => store.enqueue(tx, messages(2_600, 0)));
      await store.claim({ claimer: "c", limit: 2_500, leaseMs: 60_000 });
      await store.ack(ids.slice(0, 2_400), { claimer: "c" });
      await store.deadLetter(
        ids.slice(2_400, 2_500).map((id) => ({ id, error: "x" })),
        { claimer: "c" },
      );
      clock.advance(10_000);
      expect(await store.purge({ olderThan: new Date(clock.now()), batchSize: 1_000 })).toBe(2_500);
      const { rows } = await admin.query(`SELECT count(*)::int AS n FROM "${schema}".outbox`);
      expect(rows[0].n).toBe(100);
      expect(await store.purge({ olderThan: new Date(clock.now()) })).toBe(0);
      expect((await store.stats()).pending).toBe(100);
    } finally {
      await cleanup();
    }
  });

  it("lists dead letters oldest first with a limit and requeues them", async () => {
    const { store, cleanup } = await setup();
    try {
      const ids = await inTransaction(admin, (tx) => store.enqueue(tx, messages(5, 0)));
      await store.claim({ claimer: "c", limit: 5, leaseMs: 60_000 });
      await store.deadLetter(
        ids.map((id) => ({ id, error: `boom \u0000 ${id}` })),
        { claimer: "c" },
      );
      const dead = await store.listDead({ limit: 3 });
      expect(dead.map((e) => e.id)).toEqual(ids.slice(0, 3));
      expect(dead[0]?.lastError).toBe(`boom \uFFFD ${ids[0]}`);
      expect(await store.requeueDead([...ids.slice(0, 2), "not-an-id", "99999999999999999999"])).toBe(2);
      expect((await store.stats()).dead).toBe(3);
      expect((await store.claim({ claimer: "c", limit: 5, leaseMs: 1_000 })).map((e) => e.id)).toEqual(ids.slice(0, 2));
    } finally {
      await cleanup();
    }
  });
});

describe("fencing", () => {
  it("is atomic with the claim under concurrent leaders: no claim with an old token succeeds after a newer one", async () => {
    const pool = createPool({ max: 8 });
    const { store, cleanup } = await setup({ pool });
    try {
      await inTransaction(pool, (tx) => store.enqueue(tx, messages(400, 0)));
      const lock = "leader";
      const outcomes: Array<{ token: bigint; ok: boolean; finishedAt: number; startedAt: number }> = [];
      await Promise.all(
        Array.from({ length: 40 }, async (_, i) => {
          const token = BigInt(1 + (i % 10) + Math.floor(i / 10));
          const startedAt = performance.now();
          const code = await codeOf(
            store.claim({ claimer: `c${i}`, limit: 5, leaseMs: 60_000, fence: { lock, token } }),
          );
          outcomes.push({ token, ok: code === undefined, startedAt, finishedAt: performance.now() });
          if (code !== undefined) expect(code).toBe(OutboxErrorCode.Fenced);
        }),
      );
      // Any claim that started after a successful one finished must not carry a lower token.
      for (const a of outcomes.filter((o) => o.ok)) {
        for (const b of outcomes.filter((o) => o.ok && o.startedAt > a.finishedAt)) {
          expect(b.token >= a.token).toBe(true);
        }
      }
      const { rows } = await pool.query(`SELECT token::text AS token FROM "${store.names.schema}".outbox_fence`);
      expect(rows[0].token).toBe(String(outcomes.reduce((max, o) => (o.token > max ? o.token : max), 0n)));
    } finally {
      await cleanup();
      await pool.end();
    }
  });
});
