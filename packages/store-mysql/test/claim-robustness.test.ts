// The claim under the conditions an outside run found stalling the PostgreSQL store: statistics
// taken while nothing was pending, a frozen relay holding key heads, a claim that runs long while
// others ack and claim, a statement that hits its timeout. Correctness only: no timing asserts
// (the benchmark measures latency).
import {
  type Fence,
  type OutboxEntry,
  OutboxError,
  OutboxErrorCode,
  type OutboxMessage,
  OutboxRelay,
} from "@outbox/core";
import { MemoryPublisher } from "@outbox/memory";
import type mysql from "mysql2/promise";
import { afterAll, describe, expect, it } from "vitest";
import { createMySqlStore, type MySqlPoolLike, type MySqlQueryable, migrate } from "../src/index.js";
import { createPool, freshTable, inTransaction, waitFor } from "./helpers.js";

const admin = createPool({ connectionLimit: 6 });
afterAll(() => admin.end());

const seqOf = (entry: OutboxEntry) => Number(entry.headers.seq);

function entries(count: number, key: (i: number) => string | null, from: number): OutboxMessage[] {
  return Array.from({ length: count }, (_, i) => ({
    topic: "t",
    key: key(from + i),
    payload: `entry-${from + i}`,
    headers: { seq: String(from + i) },
  }));
}

async function newTable(): Promise<{ table: string; drop(): Promise<void> }> {
  const table = freshTable("rb");
  await migrate(admin, { table });
  return { table, drop: async () => void (await admin.query(`DROP TABLE IF EXISTS \`${table}\`, \`${table}_fence\``)) };
}

/**
 * The store's pool, with a gate in front of one statement: the first statement that `matches`
 * waits at the gate (`reached` resolves) until `open()` is called. The statement has not been
 * sent yet, so everything before it in its transaction holds its locks meanwhile.
 */
function gatedPool(pool: mysql.Pool, matches: (sql: string) => boolean) {
  const reached = Promise.withResolvers<void>();
  const gate = Promise.withResolvers<void>();
  let armed = true;
  const guard = async (sql: string) => {
    if (armed && matches(sql)) {
      armed = false;
      reached.resolve();
      await gate.promise;
    }
  };
  const wrapped: MySqlPoolLike = {
    query: async (sql, values) => {
      await guard(sql);
      return pool.query(sql, values as never);
    },
    getConnection: async () => {
      const conn = await pool.getConnection();
      return {
        query: async (sql: string, values?: unknown[]) => {
          await guard(sql);
          return conn.query(sql, values as never);
        },
        release: () => conn.release(),
        destroy: () => conn.destroy(),
      } satisfies MySqlQueryable & { release(): void; destroy(): void };
    },
  };
  return { pool: wrapped, reached: reached.promise, open: () => gate.resolve() };
}

describe("claims under stale statistics with a frozen holder", () => {
  it("return exactly the claimable entries: key heads and runs past the frozen holder's keys, never its keys", async () => {
    const { table, drop } = await newTable();
    const store = createMySqlStore({ pool: admin, table, onError: () => undefined });
    try {
      // Statistics taken while nothing was pending (and never again).
      await admin.query(`ALTER TABLE \`${table}\` STATS_PERSISTENT=1 STATS_AUTO_RECALC=0`);
      const churn = await inTransaction(admin, (tx) =>
        store.enqueue(
          tx,
          entries(500, (i) => `churn-${i % 50}`, 0),
        ),
      );
      await store.claim({ claimer: "churn", limit: 500, leaseMs: 60_000 });
      await store.ack(churn, { claimer: "churn" });
      await admin.query(`ANALYZE TABLE \`${table}\``);

      // At the front: 40 frozen keys with 25 entries each and 40 keyless entries; a relay claims
      // their heads and the keyless entries and freezes (leases that outlast the test).
      const frozenKey = (i: number) => `frozen-${i % 40}`;
      await inTransaction(admin, (tx) =>
        store.enqueue(
          tx,
          entries(40, () => null, 10_000),
        ),
      );
      await inTransaction(admin, (tx) => store.enqueue(tx, entries(1_000, frozenKey, 20_000)));
      const frozen = await store.claim({ claimer: "frozen", limit: 80, leaseMs: 3_600_000 });
      expect(frozen.filter((e) => e.key === null)).toHaveLength(40);
      expect(new Set(frozen.filter((e) => e.key !== null).map((e) => e.key)).size).toBe(40);

      // A frozen key deeper than a slice of the slab the claim reads past its window.
      await inTransaction(admin, (tx) =>
        store.enqueue(
          tx,
          entries(2_000, () => "frozen-deep", 25_000),
        ),
      );
      const deepHead: OutboxEntry[] = [];
      for (let i = 0; i < 50 && deepHead.length === 0; i++) {
        deepHead.push(...(await store.claim({ claimer: "frozen", limit: 1, leaseMs: 3_600_000 })));
      }
      expect(deepHead.map((e) => e.key)).toEqual(["frozen-deep"]);
      // Past them: 150 free keys (one with a deep run), keyless entries, and more of the frozen keys.
      const mixed = (i: number) =>
        i % 5 === 0 ? null : i % 7 === 0 ? frozenKey(i) : i % 11 === 0 ? "deep" : `free-${i % 150}`;
      await inTransaction(admin, (tx) => store.enqueue(tx, entries(3_000, mixed, 30_000)));
      // As after a server restart: InnoDB reloads the statistics taken while nothing was pending.
      await admin.query(`RENAME TABLE \`${table}\` TO \`${table}_x\`, \`${table}_x\` TO \`${table}\``);
      const expected = new Set(
        entries(3_000, mixed, 30_000)
          .filter((m) => !(m.key ?? "").startsWith("frozen-"))
          .map((m) => Number(m.headers?.seq)),
      );

      // Claims with a window (4 x 16 entries) that holds nothing but the frozen holder's work.
      const delivered: OutboxEntry[] = [];
      let claims = 0;
      for (; claims < 2_000 && delivered.length < expected.size; claims++) {
        const batch = await store.claim({ claimer: "relay", limit: 16, leaseMs: 60_000 });
        expect(batch.length).toBeLessThanOrEqual(16);
        for (const entry of batch) {
          expect(entry.key?.startsWith("frozen-") ?? false, `entry ${seqOf(entry)} of a frozen key`).toBe(false);
        }
        delivered.push(...batch);
        await store.ack(
          batch.map((e) => e.id),
          { claimer: "relay" },
        );
      }
      // Every claimable entry, each once, each key in order; the frozen keys' entries stay pending.
      expect(delivered.map(seqOf).sort((a, b) => a - b)).toEqual([...expected].sort((a, b) => a - b));
      for (const key of new Set(delivered.map((e) => e.key))) {
        if (key === null) continue;
        const seqs = delivered.filter((e) => e.key === key).map(seqOf);
        expect(seqs, `key ${key} out of order`).toEqual([...seqs].sort((a, b) => a - b));
      }
      expect((await store.stats()).pending).toBe(40 + 1_000 + 2_000 + 3_000 - expected.size);
      expect(await store.claim({ claimer: "relay", limit: 16, leaseMs: 60_000 })).toEqual([]);
      console.log(`stale statistics, frozen holder: ${delivered.length} entries in ${claims} claims of 16`);
    } finally {
      await store.close();
      await drop();
    }
  });

  it("read as many rows with 30,000 entries behind a frozen holder's heads as with 3,000, statistics taken on an empty table", async () => {
    // One connection, so SHOW SESSION STATUS counts the claim's own reads.
    const pool = createPool({ connectionLimit: 1 });
    const { table, drop } = await newTable();
    const store = createMySqlStore({ pool, table });
    const handlerReads = async () => {
      const [rows] = await pool.query<mysql.RowDataPacket[]>("SHOW SESSION STATUS LIKE 'Handler_read%'");
      return rows.reduce((sum, r) => sum + Number(r.Value), 0);
    };
    const readsPerClaim = async () => {
      const before = await handlerReads();
      const claimed = await store.claim({ claimer: "probe", limit: 16, leaseMs: 60_000 });
      const reads = (await handlerReads()) - before;
      await store.release(
        claimed.map((e) => e.id),
        { claimer: "probe" },
      );
      return { reads, claimed: claimed.length };
    };
    try {
      // MariaDB plans GROUP BY over (status, key_hash) as a full index scan with these statistics.
      await admin.query(`ALTER TABLE \`${table}\` STATS_PERSISTENT=1 STATS_AUTO_RECALC=0`);
      await admin.query(`ANALYZE TABLE \`${table}\``);
      // At the front, 150 keys with a backlog, their heads held by a frozen relay; then 150 other keys.
      const frozenKey = (i: number) => `frozen-${i % 150}`;
      await inTransaction(admin, (tx) => store.enqueue(tx, entries(3_000, frozenKey, 0)));
      expect(await store.claim({ claimer: "frozen", limit: 150, leaseMs: 3_600_000 })).toHaveLength(150);
      await inTransaction(admin, (tx) =>
        store.enqueue(
          tx,
          entries(300, (i) => `free-${i % 150}`, 3_000),
        ),
      );
      // As after a server restart: InnoDB reloads the statistics of the empty table, row count included.
      const reloadStatistics = () =>
        admin.query(`RENAME TABLE \`${table}\` TO \`${table}_x\`, \`${table}_x\` TO \`${table}\``);
      await reloadStatistics();
      const small = await readsPerClaim();
      // Ten times the backlog behind the frozen heads.
      for (let done = 3_300; done < 30_300; done += 3_000) {
        await inTransaction(admin, (tx) => store.enqueue(tx, entries(3_000, frozenKey, done)));
      }
      await reloadStatistics();
      const large = await readsPerClaim();
      expect(small.claimed).toBeGreaterThan(0);
      expect(large.claimed).toBeGreaterThan(0);
      console.log(`handler reads per claim of 16: 3,300 pending ${small.reads}, 30,300 pending ${large.reads}`);
      expect(large.reads).toBeLessThan(small.reads * 1.5 + 100);
    } finally {
      await store.close();
      await drop();
      await pool.end();
    }
  });
});

describe("the fence row", () => {
  it("a fenced ack or claim with the current token does not wait behind a long-running claim of the same lock", async () => {
    const { table, drop } = await newTable();
    const fence: Fence = { lock: "leader", token: 7n };
    // The long claim: it waits before its COMMIT, with everything else done (rows locked and leased).
    const slow = gatedPool(admin, (sql) => sql === "COMMIT");
    const longClaimer = createMySqlStore({ pool: slow.pool, table });
    const relay = createMySqlStore({ pool: admin, table });
    const peer = createMySqlStore({ pool: admin, table });
    try {
      const ids = await inTransaction(admin, (tx) =>
        relay.enqueue(
          tx,
          entries(30, (i) => `k-${i % 3}`, 0),
        ),
      );
      // The relay holds key k-0's run under the current token.
      const held = await relay.claim({ claimer: "relay", limit: 10, leaseMs: 60_000, fence });
      expect(new Set(held.map((e) => e.key))).toEqual(new Set(["k-0", "k-1", "k-2"]));
      await relay.release(
        held.filter((e) => e.key !== "k-0").map((e) => e.id),
        { claimer: "relay", fence },
      );
      const k0 = held.filter((e) => e.key === "k-0");

      const long = longClaimer.claim({ claimer: "long", limit: 4, leaseMs: 60_000, fence });
      await slow.reached;
      // The long claim's transaction is open. The relay acks its own entries with the same token,
      // another store (another process) acks and claims with it too: none of them waits.
      await relay.ack(
        k0.slice(0, 2).map((e) => e.id),
        { claimer: "relay", fence },
      );
      await peer.ack(
        k0.slice(2).map((e) => e.id),
        { claimer: "relay", fence },
      );
      const other = await peer.claim({ claimer: "peer", limit: 30, leaseMs: 60_000, fence });
      slow.open();
      const longClaimed = await long;
      expect(longClaimed.length).toBeGreaterThan(0);
      // Nothing twice, no key with two claimers.
      const longKeys = new Set(longClaimed.map((e) => e.key));
      expect(other.some((e) => longKeys.has(e.key))).toBe(false);
      expect(new Set([...longClaimed, ...other].map((e) => e.id)).size).toBe(longClaimed.length + other.length);
      expect((await relay.stats()).pending).toBe(ids.length - k0.length);
      // An older token is still refused, with the newest reported.
      const refused = await relay
        .ack(
          other.map((e) => e.id),
          { claimer: "peer", fence: { lock: "leader", token: 6n } },
        )
        .catch((error: unknown) => error);
      expect(OutboxError.is(refused, OutboxErrorCode.Fenced)).toBe(true);
      expect((refused as OutboxError).details).toMatchObject({ token: "6", newest: "7" });
    } finally {
      slow.open();
      await Promise.all([longClaimer.close(), relay.close(), peer.close()]);
      await drop();
    }
  });

  it("a newer token is recorded at once while an older token's claim is still running, and refuses it", async () => {
    const { table, drop } = await newTable();
    const slow = gatedPool(admin, (sql) => sql === "COMMIT");
    const deposed = createMySqlStore({ pool: slow.pool, table });
    const leader = createMySqlStore({ pool: admin, table });
    try {
      await inTransaction(admin, (tx) =>
        leader.enqueue(
          tx,
          entries(6, (i) => `k-${i % 2}`, 0),
        ),
      );
      const before = deposed.claim({ claimer: "old", limit: 1, leaseMs: 60_000, fence: { lock: "leader", token: 1n } });
      await slow.reached;
      // The new leader's first claim records token 2 while the old claim's transaction is open.
      const taken = await leader.claim({
        claimer: "new",
        limit: 10,
        leaseMs: 60_000,
        fence: { lock: "leader", token: 2n },
      });
      expect(taken.length).toBeGreaterThan(0);
      slow.open();
      await before;
      // From now on the old token is refused, claims and settles alike.
      const refusedClaim = await deposed
        .claim({ claimer: "old", limit: 10, leaseMs: 60_000, fence: { lock: "leader", token: 1n } })
        .catch((error: unknown) => error);
      expect(OutboxError.is(refusedClaim, OutboxErrorCode.Fenced)).toBe(true);
    } finally {
      slow.open();
      await Promise.all([deposed.close(), leader.close()]);
      await drop();
    }
  });
});

describe("statement timeout", () => {
  it("a claim past statementTimeoutMs fails with OUTBOX_STORE_UNAVAILABLE; the next claim succeeds and a relay carries on", async () => {
    const { table, drop } = await newTable();
    const pool = createPool({ connectionLimit: 4 });
    const store = createMySqlStore({ pool, table, statementTimeoutMs: 200, onError: () => undefined });
    const locker = await admin.getConnection();
    const broker = new MemoryPublisher();
    const relay = new OutboxRelay({ store, publisher: broker, pollMs: 10 });
    const relayErrors: unknown[] = [];
    relay.on("error", ({ error }) => relayErrors.push(error));
    try {
      await inTransaction(admin, (tx) =>
        store.enqueue(
          tx,
          entries(5, (i) => `k-${i % 2}`, 0),
        ),
      );
      // Another session holds the table: the claim's first read waits for it until the server
      // stops it at 200 ms. It cannot finish earlier, whatever the machine's speed.
      await locker.query(`LOCK TABLES \`${table}\` WRITE`);
      const error = await store.claim({ claimer: "c", limit: 10, leaseMs: 60_000 }).catch((caught: unknown) => caught);
      expect(OutboxError.is(error, OutboxErrorCode.StoreUnavailable)).toBe(true);
      expect((error as OutboxError).details).toMatchObject({ operation: "claim", statementTimeoutMs: 200 });

      // A relay meanwhile: its claims fail the same way and it keeps trying.
      relay.start();
      await waitFor(() => relayErrors.length >= 2, 20_000, "two failed claims of the relay");
      for (const failure of relayErrors) expect(OutboxError.is(failure, OutboxErrorCode.StoreUnavailable)).toBe(true);
      await locker.query("UNLOCK TABLES");
      await waitFor(() => broker.messages.length === 5, 20_000, "the relay to publish everything");
      expect(broker.messages.map((m) => Number(m.headers.seq)).sort()).toEqual([0, 1, 2, 3, 4]);
      await relay.stop();

      await inTransaction(admin, (tx) =>
        store.enqueue(
          tx,
          entries(3, () => null, 10),
        ),
      );
      expect((await store.claim({ claimer: "c", limit: 10, leaseMs: 60_000 })).map(seqOf)).toEqual([10, 11, 12]);
    } finally {
      await locker.query("UNLOCK TABLES").catch(() => undefined);
      locker.release();
      await relay.stop();
      await store.close();
      await pool.end();
      await drop();
    }
  });

  it("rejects a statementTimeoutMs that is not a positive integer", () => {
    expect(() => createMySqlStore({ pool: admin, statementTimeoutMs: 0 })).toThrow(
      expect.objectContaining({ code: OutboxErrorCode.InvalidOptions }),
    );
  });
});
