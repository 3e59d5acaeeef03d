import { readFile } from "node:fs/promises";
import { keyOrderViolations } from "@outbox/conformance";
import {
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
import mysql from "mysql2/promise";
import { afterAll, describe, expect, it } from "vitest";
import { createMySqlStore, type MySqlStoreOptions, migrate, schemaSql } from "../src/index.js";
import { createPool, freshTable, inTransaction, killConnections, mysqlUrl, type Pool, waitFor } from "./helpers.js";

const admin = createPool({ connectionLimit: 6 });
afterAll(() => admin.end());

async function setup(options: { pool?: Pool; clock?: ManualClock; store?: Partial<MySqlStoreOptions> } = {}) {
  const pool = options.pool ?? admin;
  const table = freshTable();
  await migrate(admin, { table });
  const errors: OutboxError[] = [];
  const store = createMySqlStore({
    pool,
    table,
    clock: options.clock,
    onError: (e) => errors.push(e),
    ...options.store,
  });
  return {
    store,
    table,
    errors,
    async cleanup() {
      await store.close();
      await admin.query(`DROP TABLE IF EXISTS \`${table}\`, \`${table}_fence\``);
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
    for (const bad of ["x`; DROP TABLE y; --", "a b", "", "1abc", "x".repeat(65), "tab.le"]) {
      expect(() => createMySqlStore({ pool: admin, table: bad }), bad).toThrow(
        expect.objectContaining({ code: OutboxErrorCode.InvalidOptions }),
      );
      expect(() => schemaSql({ database: bad })).toThrow(
        expect.objectContaining({ code: OutboxErrorCode.InvalidOptions }),
      );
    }
    expect(() => createMySqlStore({} as never)).toThrow(
      expect.objectContaining({ code: OutboxErrorCode.InvalidOptions }),
    );
    expect(() => createMySqlStore({ pool: admin, limits: { maxKeyLength: 5_000 } })).toThrow(
      expect.objectContaining({ code: OutboxErrorCode.InvalidOptions }),
    );
  });

  it("works with an explicit database and a mixed-case table name (quoted everywhere)", async () => {
    const table = `Mixed_${freshTable()}`;
    await migrate(admin, { database: "outbox_test", table });
    const store = createMySqlStore({ pool: admin, database: "outbox_test", table });
    try {
      const ids = await inTransaction(admin, (tx) => store.enqueue(tx, messages(3, 1)));
      const claimed = await store.claim({ claimer: "c", limit: 10, leaseMs: 1_000 });
      expect(claimed.map((e) => e.id)).toEqual(ids);
    } finally {
      await store.close();
      await admin.query(`DROP TABLE \`outbox_test\`.\`${table}\`, \`outbox_test\`.\`${table}_fence\``);
    }
  });

  it("migrate is idempotent and safe to run concurrently; utf8mb4 everywhere", async () => {
    const table = freshTable();
    try {
      await Promise.all([migrate(admin, { table }), migrate(admin, { table }), migrate(admin, { table })]);
      await migrate(admin, { table });
      const [indexes] = await admin.query<mysql.RowDataPacket[]>(
        `SELECT DISTINCT INDEX_NAME AS name FROM information_schema.STATISTICS
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? ORDER BY 1`,
        [table],
      );
      expect(indexes.map((r) => r.name)).toEqual([
        "outbox_key_idx",
        "outbox_pending_idx",
        "outbox_settled_idx",
        "PRIMARY",
      ]);
      const [charsets] = await admin.query<mysql.RowDataPacket[]>(
        `SELECT DISTINCT CHARACTER_SET_NAME AS cs FROM information_schema.COLUMNS
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN (?, ?) AND CHARACTER_SET_NAME IS NOT NULL`,
        [table, `${table}_fence`],
      );
      expect(charsets.map((r) => r.cs)).toEqual(["utf8mb4"]);
    } finally {
      await admin.query(`DROP TABLE IF EXISTS \`${table}\`, \`${table}_fence\``);
    }
  });

  it("ships sql/schema.sql, identical to schemaSql() for the default names", async () => {
    const shipped = await readFile(new URL("../sql/schema.sql", import.meta.url), "utf8");
    expect(shipped).toBe(schemaSql());
  });
});

describe("enqueue", () => {
  it("round-trips headers with NUL and unicode, text fields with 4-byte characters, even over a utf8mb3 connection", async () => {
    const { store, cleanup } = await setup();
    // A connection whose charset cannot hold 4-byte characters (TypeORM's default is utf8mb3).
    const legacy = mysql.createPool({ uri: mysqlUrl, connectionLimit: 1, charset: "UTF8_GENERAL_CI" });
    try {
      const headers = { nul: "a\u0000b", emoji: "🚀", quote: '"\\', empty: "", "x-日本": "語" };
      const message = {
        topic: "topic-🚀",
        key: "key-🧪-\u00e9",
        payload: "p",
        headers,
        idempotencyKey: "idem-🚀",
      };
      await inTransaction(legacy, (tx) => store.enqueue(tx, message));
      const [entry] = await store.claim({ claimer: "claimer-🚀", limit: 1, leaseMs: 1_000 });
      expect(entry?.headers).toEqual(headers);
      expect(entry?.topic).toBe(message.topic);
      expect(entry?.key).toBe(message.key);
      expect(entry?.idempotencyKey).toBe(message.idempotencyKey);
      await store.retry([{ id: entry?.id as string, error: "boom 🚀 \u0000 end", availableAt: new Date(0) }], {
        claimer: "claimer-🚀",
      });
      const [again] = await store.claim({ claimer: "c", limit: 1, leaseMs: 1_000 });
      expect(again?.lastError).toBe("boom 🚀 \u0000 end");
    } finally {
      await legacy.end();
      await cleanup();
    }
  });

  it("stores 1 MiB and 4 MiB payloads byte for byte (max_allowed_packet permitting, checked here)", async () => {
    const [[packet]] = await admin.query<mysql.RowDataPacket[]>("SELECT @@max_allowed_packet AS n");
    // Payloads travel hex-encoded in the INSERT: 2 x 4 MiB plus the statement must fit.
    expect(Number(packet?.n)).toBeGreaterThanOrEqual(16 * 1024 * 1024);
    const { store, cleanup } = await setup();
    try {
      const big = (size: number, seed: number) => new Uint8Array(size).map((_, i) => (i * seed + 7) % 256);
      const payloads = [big(1024 * 1024, 31), big(1024 * 1024, 17), big(4 * 1024 * 1024, 13), new Uint8Array(0)];
      // Four messages, 6 MiB: more than maxStatementBytes, so several INSERTs in one enqueue.
      const ids = await inTransaction(admin, (tx) =>
        store.enqueue(
          tx,
          payloads.map((payload) => ({ topic: "big", payload })),
        ),
      );
      const claimed = await store.claim({ claimer: "c", limit: 10, leaseMs: 1_000 });
      expect(claimed.map((e) => e.id)).toEqual(ids);
      claimed.forEach((entry, i) => {
        expect(Buffer.from(entry.payload).equals(Buffer.from(payloads[i] as Uint8Array))).toBe(true);
      });
    } finally {
      await cleanup();
    }
  });

  it("inserts thousands of entries in one call, ids in message order (read back by a marker)", async () => {
    const { store, table, cleanup } = await setup();
    try {
      const ids = await inTransaction(admin, (tx) => store.enqueue(tx, messages(5_000, 7)));
      expect(ids).toHaveLength(5_000);
      const [rows] = await admin.query<mysql.RowDataPacket[]>(
        `SELECT CAST(id AS CHAR) AS id, CAST(headers AS CHAR) AS headers FROM \`${table}\``,
      );
      const seqById = new Map(rows.map((r) => [r.id as string, Number(JSON.parse(r.headers).seq)]));
      ids.forEach((id, i) => {
        expect(seqById.get(id)).toBe(i);
      });
    } finally {
      await cleanup();
    }
  });

  it("with auto_increment_increment = 3 (as on Galera) the ids still name the right rows", async () => {
    const { store, table, cleanup } = await setup();
    const conn = await admin.getConnection();
    try {
      await conn.query("SET SESSION auto_increment_increment = 3");
      await conn.query("START TRANSACTION");
      const ids = await store.enqueue(conn, messages(10, 0));
      await conn.query("COMMIT");
      const [rows] = await admin.query<mysql.RowDataPacket[]>(
        `SELECT CAST(o.id AS CHAR) AS id, CAST(o.headers AS CHAR) AS headers FROM \`${table}\` o ORDER BY o.id`,
      );
      expect(rows.map((r) => r.id)).toEqual(ids);
      expect(rows.map((r) => Number(JSON.parse(r.headers).seq))).toEqual(Array.from({ length: 10 }, (_, i) => i));
    } finally {
      await conn.query("SET SESSION auto_increment_increment = 1");
      conn.release();
      await cleanup();
    }
  });

  it("rejects a callback-style connection with OUTBOX_INVALID_OPTIONS", async () => {
    const { store, cleanup } = await setup();
    try {
      const callbackStyle = { query: () => undefined } as never;
      expect(await codeOf(store.enqueue(callbackStyle, messages(1, 0)))).toBe(OutboxErrorCode.InvalidOptions);
    } finally {
      await cleanup();
    }
  });
});

describe("claim cost", () => {
  it("does not grow with a hot key's backlog behind a leased head (rows read per claim)", async () => {
    // One connection, so SHOW SESSION STATUS sees the claims' own handler reads.
    const pool = createPool({ connectionLimit: 1 });
    const { store, cleanup } = await setup({ pool });
    const handlerReads = async () => {
      const [rows] = await pool.query<mysql.RowDataPacket[]>("SHOW SESSION STATUS LIKE 'Handler_read%'");
      return rows.reduce((sum, r) => sum + Number(r.Value), 0);
    };
    // Two claims in a row, as a relay makes them (the first one's leases still held), then released.
    const readsPerTwoClaims = async () => {
      const out = [];
      for (let i = 0; i < 2; i++) {
        const before = await handlerReads();
        const claimed = await store.claim({ claimer: "other", limit: 32, leaseMs: 60_000 });
        out.push({ reads: (await handlerReads()) - before, claimed });
      }
      await store.release(
        out.flatMap((claim) => claim.claimed.map((e) => e.id)),
        { claimer: "other" },
      );
      return out.map((claim) => ({ reads: claim.reads, claimed: claim.claimed.map((e) => e.key) }));
    };
    try {
      // A hot key, its head leased by someone else, then 10 other keys.
      await inTransaction(admin, (tx) =>
        store.enqueue(
          tx,
          messages(1_000, 0).map((m) => ({ ...m, key: "hot" })),
        ),
      );
      await store.claim({ claimer: "holder", limit: 1, leaseMs: 60_000 });
      await inTransaction(admin, (tx) => store.enqueue(tx, messages(10, 10, 1_000)));
      const small = await readsPerTwoClaims();
      await inTransaction(admin, (tx) =>
        store.enqueue(
          tx,
          messages(20_000, 0).map((m) => ({ ...m, key: "hot" })),
        ),
      );
      const large = await readsPerTwoClaims();
      // The hot key's backlog costs the slice of the key index it sits in one read at most (the
      // next read of that slice starts after it): two claims in a row find every other key, and
      // never the hot key.
      for (const pair of [small, large]) {
        expect(new Set(pair.flatMap((claim) => claim.claimed))).toEqual(
          new Set(Array.from({ length: 10 }, (_, i) => `key-${i}`)),
        );
        expect(pair.flatMap((claim) => claim.claimed)).toHaveLength(10);
      }
      const reads = (pair: typeof small) => pair.reduce((sum, claim) => sum + claim.reads, 0);
      console.log(`handler reads per two claims: 1k backlog ${reads(small)}, 21k backlog ${reads(large)}`);
      // 20x the backlog, about the same work.
      expect(reads(large)).toBeLessThan(reads(small) * 1.5 + 100);
    } finally {
      await cleanup();
      await pool.end();
    }
  });
});

describe("concurrency on real connections", () => {
  it("delivers a lower id committed late, with two real connections (no sequence-gap loss)", async () => {
    const pool = createPool({ connectionLimit: 4 });
    const { store, cleanup } = await setup({ pool });
    try {
      const slow = await pool.getConnection();
      await slow.query("START TRANSACTION");
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

  it("8 connections hammering claims never hold two entries of one key and keep per-key order", async () => {
    const pool = createPool({ connectionLimit: 8 });
    const { store, cleanup } = await setup({ pool });
    try {
      await inTransaction(pool, (tx) => store.enqueue(tx, messages(1_200, 12)));
      const inFlight = new Map<string, string>();
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
            const batch = await store.claim({ claimer, limit: 8, leaseMs: 60_000 });
            for (const entry of batch) {
              const holder = inFlight.get(entry.key as string);
              if (holder !== undefined && holder !== claimer) violations.push(`${entry.key} held by two claimers`);
              inFlight.set(entry.key as string, claimer);
            }
            if (batch.length === 0) {
              await new Promise((resolve) => setTimeout(resolve, 2));
              continue;
            }
            // Settle like the relay: ack a prefix of each key's run, release the rest.
            const acked: OutboxEntry[] = [];
            const back: OutboxEntry[] = [];
            const stopped = new Set<string>();
            for (const entry of batch) {
              if (stopped.has(entry.key as string) || next() >= 0.7) {
                stopped.add(entry.key as string);
                back.push(entry);
              } else acked.push(entry);
            }
            for (const entry of batch) inFlight.delete(entry.key as string);
            publishedOrder.push(...acked.map((e) => ({ key: e.key, seq: seqOf(e) })));
            await store.ack(
              acked.map((e) => e.id),
              { claimer },
            );
            await store.release(
              back.map((e) => e.id),
              { claimer },
            );
          }
        }),
      );
      expect(violations).toEqual([]);
      expect(publishedOrder).toHaveLength(1_200);
      expect(keyOrderViolations(publishedOrder)).toEqual([]);
      console.log(`lock conflicts retried: ${store.lockConflictsRetried}`);
    } finally {
      await cleanup();
      await pool.end();
    }
  });

  it("four relays on real time, each with its own pool, keep per-key order with a flaky broker", async () => {
    const pools = Array.from({ length: 4 }, () => createPool({ connectionLimit: 3 }));
    const { store: producer, table, cleanup } = await setup();
    const stores = pools.map((pool) => createMySqlStore({ pool, table, onError: () => undefined }));
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
        const keys = new Set(entries.map((e) => e.key).filter((k) => k !== null));
        for (const key of keys) {
          if (inFlight.has(key)) violations.push(`${key} published concurrently`);
          inFlight.add(key);
        }
        await new Promise((resolve) => setTimeout(resolve, next() * 5));
        const failed = new Set<string>();
        const outcomes = entries.map((entry) => {
          if (entry.key && failed.has(entry.key)) return transientFailure(new Error("held back"));
          if (next() < 0.15) {
            if (entry.key) failed.add(entry.key);
            return transientFailure(new Error("flaky"));
          }
          delivered.push({ key: entry.key, seq: Number(entry.headers.seq) });
          return published();
        });
        for (const key of keys) inFlight.delete(key);
        return outcomes;
      },
    };
    const relays = stores.map(
      (store) =>
        new OutboxRelay({ store, publisher, pollMs: 20, batchSize: 16, retry: { baseDelayMs: 5, maxDelayMs: 20 } }),
    );
    try {
      for (const relay of relays) relay.start();
      for (let i = 0; i < 8; i++) {
        await inTransaction(admin, (tx) => producer.enqueue(tx, messages(100, 10, i * 100)));
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      await waitFor(() => new Set(delivered.map((d) => d.seq)).size >= 800, 60_000, "800 deliveries");
      expect(violations).toEqual([]);
      const firsts = new Map<number, { key: string | null; seq: number }>();
      for (const d of delivered) if (!firsts.has(d.seq)) firsts.set(d.seq, d);
      expect(keyOrderViolations([...firsts.values()])).toEqual([]);
      console.log(`4 relays: ${delivered.length} deliveries of 800 entries`);
    } finally {
      await Promise.all(relays.map((relay) => relay.stop()));
      await Promise.all(stores.map((store) => store.close()));
      await cleanup();
      await Promise.all(pools.map((pool) => pool.end()));
    }
  });
});

describe("lock conflicts", () => {
  it("a real lock-wait timeout (1205) on an ack is retried inside the store, not surfaced", async () => {
    const pool = createPool({ connectionLimit: 2 });
    pool.pool.on("connection", (conn: { query(sql: string): void }) => {
      conn.query("SET SESSION innodb_lock_wait_timeout = 1");
    });
    const { store, table, cleanup } = await setup({ pool });
    const blocker = await admin.getConnection();
    try {
      const [id] = await inTransaction(admin, (tx) => store.enqueue(tx, messages(1, 0)));
      await store.claim({ claimer: "c", limit: 1, leaseMs: 60_000 });
      await blocker.query("START TRANSACTION");
      await blocker.query(`SELECT id FROM \`${table}\` WHERE id = ? FOR UPDATE`, [id]);
      const ack = store.ack([id as string], { claimer: "c" });
      setTimeout(() => void blocker.query("COMMIT"), 1_500);
      await ack;
      expect(store.lockConflictsRetried).toBeGreaterThan(0);
      expect((await store.stats()).pending).toBe(0);
    } finally {
      blocker.release();
      await cleanup();
      await pool.end();
    }
  });

  it("deadlocks (1213) are retried, and surface as OUTBOX_STORE_UNAVAILABLE only after lockRetries", async () => {
    const table = freshTable();
    await migrate(admin, { table });
    let failures = 0;
    const deadlock = () => Object.assign(new Error("Deadlock found when trying to get lock"), { errno: 1213 });
    // The real pool, with the settle statement failing as InnoDB would (a unit test of the retry loop).
    const flaky = {
      getConnection: () => admin.getConnection(),
      query: async (sql: string, values?: unknown[]) => {
        if (sql.startsWith("UPDATE") && failures-- > 0) throw deadlock();
        return admin.query(sql, values);
      },
    };
    const store = createMySqlStore({ pool: flaky, table, lockRetries: 4 });
    try {
      const [id] = await inTransaction(admin, (tx) => store.enqueue(tx, messages(1, 0)));
      await store.claim({ claimer: "c", limit: 1, leaseMs: 60_000 });
      failures = 3;
      await store.release([id as string], { claimer: "c" });
      expect(store.lockConflictsRetried).toBe(3);
      await store.claim({ claimer: "c", limit: 1, leaseMs: 60_000 });
      failures = 10;
      const error = await store.ack([id as string], { claimer: "c" }).catch((e: unknown) => e);
      expect(OutboxError.is(error, OutboxErrorCode.StoreUnavailable)).toBe(true);
      expect((error as OutboxError).details.errno).toBe(1213);
    } finally {
      await store.close();
      await admin.query(`DROP TABLE IF EXISTS \`${table}\`, \`${table}_fence\``);
    }
  });
});

describe("connection loss", () => {
  it("survives KILL CONNECTION of the relay's connections, reports errors, then publishes again", async () => {
    const pool = createPool({ connectionLimit: 4 });
    const { store, cleanup } = await setup({ pool });
    const broker = new MemoryPublisher();
    const relay = new OutboxRelay({ store, publisher: broker, pollMs: 20, batchSize: 50, leaseMs: 2_000 });
    const relayErrors: unknown[] = [];
    relay.on("error", ({ error }) => relayErrors.push(error));
    try {
      relay.start();
      await inTransaction(admin, (tx) => store.enqueue(tx, messages(500, 5)));
      let killed = 0;
      for (let i = 0; i < 20; i++) {
        killed += await killConnections(admin, [...pool.threadIds]);
        await new Promise((resolve) => setTimeout(resolve, 15));
      }
      expect(killed).toBeGreaterThan(0);
      await inTransaction(admin, (tx) => store.enqueue(tx, messages(100, 5, 500)));
      await waitFor(() => new Set(broker.messages.map(seqOf)).size === 600, 30_000, "all 600 entries");
      for (const error of relayErrors) {
        if (OutboxError.is(error)) expect(error.code).toBe(OutboxErrorCode.StoreUnavailable);
      }
      const firsts = new Map<number, { key: string | null; seq: number }>();
      for (const m of broker.messages) if (!firsts.has(seqOf(m))) firsts.set(seqOf(m), { key: m.key, seq: seqOf(m) });
      expect(keyOrderViolations([...firsts.values()])).toEqual([]);
      console.log(`connections killed: ${killed}, relay error events: ${relayErrors.length}`);
    } finally {
      await relay.stop();
      await cleanup();
      await pool.end();
    }
  });

  it("an idle pooled connection killed does not crash the process; the next call works", async () => {
    const pool = createPool({ connectionLimit: 2 });
    const { store, cleanup } = await setup({ pool });
    try {
      await store.stats();
      expect(await killConnections(admin, [...pool.threadIds])).toBeGreaterThan(0);
      await new Promise((resolve) => setTimeout(resolve, 100));
      expect((await store.stats()).pending).toBe(0);
    } finally {
      await cleanup();
      await pool.end();
    }
  });

  it("fails with OUTBOX_STORE_UNAVAILABLE when the server cannot be reached, OUTBOX_CLOSED after close", async () => {
    const pool = mysql.createPool({ uri: "mysql://outbox:outbox@127.0.0.1:1/none", connectionLimit: 1 });
    const store = createMySqlStore({ pool });
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
    const { store, table, cleanup } = await setup({ clock });
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
      const [[row]] = await admin.query<mysql.RowDataPacket[]>(`SELECT COUNT(*) AS n FROM \`${table}\``);
      expect(Number(row?.n)).toBe(100);
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
      expect(dead[0]?.lastError).toBe(`boom \u0000 ${ids[0]}`);
      expect(await store.requeueDead([...ids.slice(0, 2), "not-an-id", "99999999999999999999"])).toBe(2);
      expect((await store.stats()).dead).toBe(3);
      expect((await store.claim({ claimer: "c", limit: 5, leaseMs: 1_000 })).map((e) => e.id)).toEqual(ids.slice(0, 2));
    } finally {
      await cleanup();
    }
  });
});

describe("fencing and wake-ups", () => {
  it("is atomic with the claim under concurrent leaders: no claim with an old token succeeds after a newer one", async () => {
    const pool = createPool({ connectionLimit: 8 });
    const { store, table, cleanup } = await setup({ pool });
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
      for (const a of outcomes.filter((o) => o.ok)) {
        for (const b of outcomes.filter((o) => o.ok && o.startedAt > a.finishedAt)) {
          expect(b.token >= a.token).toBe(true);
        }
      }
      const [[row]] = await pool.query<mysql.RowDataPacket[]>(
        `SELECT CAST(token AS CHAR) AS token FROM \`${table}_fence\``,
      );
      expect(row?.token).toBe(String(outcomes.reduce((max, o) => (o.token > max ? o.token : max), 0n)));
    } finally {
      await cleanup();
      await pool.end();
    }
  });

  it("store.transaction() wakes a relay polling every 60 s at once after its commit", async () => {
    const pool = createPool({ connectionLimit: 4 });
    const { store, cleanup } = await setup({ pool });
    const broker = new MemoryPublisher();
    const relay = new OutboxRelay({ store, publisher: broker, pollMs: 60_000 });
    try {
      relay.start();
      await waitFor(() => relay.metrics().cycles >= 1, 5_000, "the first (empty) cycle");
      const latencies: number[] = [];
      for (let i = 0; i < 5; i++) {
        const start = performance.now();
        await store.transaction((tx) => store.enqueue(tx, { topic: "t", payload: `wake-${i}` }));
        await waitFor(() => broker.messages.length > i, 10_000, "the wake-up publish");
        latencies.push(performance.now() - start);
      }
      // A plain commit elsewhere plus notifyCommitted() does the same.
      await inTransaction(pool, (tx) => store.enqueue(tx, { topic: "t", payload: "notified" }));
      store.notifyCommitted();
      await waitFor(() => broker.messages.length === 6, 10_000, "the notified publish");
      console.log(`local wake-up latency (commit -> published), ms: ${latencies.map((l) => l.toFixed(1)).join(", ")}`);
      expect(Math.max(...latencies)).toBeLessThan(5_000);
    } finally {
      await relay.stop();
      await cleanup();
      await pool.end();
    }
  });
});
