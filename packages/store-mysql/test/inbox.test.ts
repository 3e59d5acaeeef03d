import { describeInboxStoreConformance, type InboxStoreHarness } from "@outbox/conformance/inbox";
import type { ManualClock } from "@outbox/core";
import { createInbox, type InboxMessage } from "@outbox/inbox";
import mysql from "mysql2/promise";
import { afterAll, describe, expect, it } from "vitest";
import { inboxKeyHash, inboxStatsSql, resolveInboxNames } from "../src/inbox.js";
import { createMySqlInboxStore, createMySqlStore, inboxSchemaSql, migrate, migrateInbox } from "../src/index.js";
import { createPool, freshTable, mysqlUrl } from "./helpers.js";

// Two pools: the kit's concurrent deliveries race two independent store instances (two consumer processes).
const pool = createPool({ connectionLimit: 8 });
const peerPool = createPool({ connectionLimit: 4 });
afterAll(async () => {
  await pool.end();
  await peerPool.end();
});

/** An inbox store on fresh tables of the real server; `peer` is a second store on its own pool. */
async function mysqlInboxHarness(clock: ManualClock): Promise<InboxStoreHarness<mysql.PoolConnection>> {
  const table = freshTable("inbox");
  const effects = `${table}_effects`;
  await migrateInbox(pool, { table });
  await pool.query(`CREATE TABLE \`${effects}\` (name VARCHAR(255) NOT NULL) ENGINE=InnoDB`);
  const store = createMySqlInboxStore({ pool, table, clock });
  return {
    store,
    clock,
    effect: async (tx, name) => {
      await tx.query(`INSERT INTO \`${effects}\` (name) VALUES (?)`, [name]);
    },
    countEffects: async (name) => {
      const [rows] = await pool.query<mysql.RowDataPacket[]>(
        `SELECT COUNT(*) AS n FROM \`${effects}\` WHERE name = ?`,
        [name],
      );
      return Number(rows[0]?.n);
    },
    peer: async () => createMySqlInboxStore({ pool: peerPool, table, clock }),
    async teardown() {
      await store.close();
      await pool.query(`DROP TABLE IF EXISTS \`${table}\`, \`${table}_attempts\`, \`${effects}\``);
    },
  };
}

describeInboxStoreConformance({
  name: "store-mysql inbox (mysql2 Pool, MariaDB 10.11)",
  create: mysqlInboxHarness,
});

describe("store-mysql inbox", () => {
  it("chaining: the handler's tx is the handle MySqlStore.enqueue takes; a follow-up commits with the key or never", async () => {
    const table = freshTable("inbox");
    const outboxTable = freshTable("outbox");
    await migrate(pool, { table: outboxTable });
    await migrateInbox(pool, { table });
    const outbox = createMySqlStore({ pool, table: outboxTable });
    const inbox = createInbox({ store: createMySqlInboxStore({ pool, table }), consumer: "shipping", maxAttempts: 10 });
    const ship = (fail: boolean) => async (tx: mysql.PoolConnection, received: InboxMessage) => {
      const [id] = await outbox.enqueue(tx, {
        topic: "shipments.created",
        key: received.key,
        payload: received.id,
        idempotencyKey: `shipment:${received.id}`,
      });
      if (fail) throw new Error(`rolled back after enqueueing entry ${id}`);
    };
    try {
      const received: InboxMessage = { id: "order-1", key: "customer-7" };
      await expect(inbox.handle(received, ship(true))).rejects.toThrow("rolled back after enqueueing");
      expect(await inbox.handle(received, ship(false))).toMatchObject({ status: "handled" });
      expect(await inbox.handle(received, ship(false))).toMatchObject({ status: "duplicate" });
      const claimed = await outbox.claim({ claimer: "relay", limit: 10, leaseMs: 1_000 });
      expect(
        claimed.map((entry) => entry.idempotencyKey),
        "one follow-up entry: the committed delivery's",
      ).toEqual(["shipment:order-1"]);
    } finally {
      await outbox.close();
      await pool.query(
        `DROP TABLE IF EXISTS \`${table}\`, \`${table}_attempts\`, \`${outboxTable}\`, \`${outboxTable}_fence\``,
      );
    }
  });

  it("runs the docs/inbox.md example as written (a redelivery included), in a database of its own", async () => {
    const database = freshTable("docs");
    await pool.query(`CREATE DATABASE \`${database}\``);
    const url = new URL(mysqlUrl);
    url.pathname = `/${database}`;
    const MYSQL_URL = url.href;
    const setup = createPool({ uri: MYSQL_URL });
    await setup.query("CREATE TABLE shipments (order_id VARCHAR(64) NOT NULL)");
    await migrate(setup);
    const message: InboxMessage = { id: "order-1", idempotencyKey: "order-created:order-1" };
    const orderId = "order-1";
    const payload = JSON.stringify({ orderId });
    const pools: mysql.Pool[] = [];
    // One delivery, as a consumer process runs it.
    const deliver = async () => {
      // docs/inbox.md, "On MySQL / MariaDB", from here
      const pool = mysql.createPool(MYSQL_URL); // the URL's path names the database
      await migrateInbox(pool); // tables "inbox" and "inbox_attempts" (options: database, table)
      const outbox = createMySqlStore({ pool });
      const inbox = createInbox({ store: createMySqlInboxStore({ pool }), consumer: "shipping" });

      await inbox.handle(message, async (tx) => {
        // tx: a mysql2 PoolConnection inside START TRANSACTION ... COMMIT
        await tx.query("INSERT INTO shipments (order_id) VALUES (?)", [orderId]);
        await outbox.enqueue(tx, { topic: "shipments.created", key: orderId, payload });
      });
      // to here
      pools.push(pool);
    };
    try {
      await deliver();
      await deliver();
      const [shipments] = await setup.query<mysql.RowDataPacket[]>("SELECT COUNT(*) AS n FROM shipments");
      expect(Number(shipments[0]?.n), "one shipment for two deliveries").toBe(1);
      const outbox = createMySqlStore({ pool: setup });
      expect((await outbox.stats()).pending, "one follow-up entry").toBe(1);
    } finally {
      await Promise.all(pools.map((p) => p.end()));
      await setup.end();
      await pool.query(`DROP DATABASE \`${database}\``);
    }
  });

  it("dedupes keys longer than an InnoDB index allows (1,024 four-byte characters) by their hash", async () => {
    const table = freshTable("inbox");
    await migrateInbox(pool, { table });
    const inbox = createInbox({ store: createMySqlInboxStore({ pool, table }), maxAttempts: 1 });
    try {
      const long = "\u{1F600}".repeat(512); // 1,024 UTF-16 units, 2,048 bytes of UTF-8
      const near = `${long.slice(0, -2)}\u{1F601}`;
      const handler = async () => "ran";
      expect((await inbox.handle({ id: long }, handler)).status).toBe("handled");
      expect((await inbox.handle({ id: long }, handler)).status).toBe("duplicate");
      expect((await inbox.handle({ id: near }, handler)).status, "a key differing in its last character").toBe(
        "handled",
      );
      const dead = await inbox.handle({ id: "x", idempotencyKey: "é\u{1F600}\u2028" }, () => Promise.reject("no"));
      expect(dead.status).toBe("dead");
      const [letter] = await inbox.listDead();
      expect(letter?.messageId, "message ids read back byte for byte").toBe("é\u{1F600}\u2028");
      expect(letter?.message.idempotencyKey).toBe("é\u{1F600}\u2028");
    } finally {
      await pool.query(`DROP TABLE IF EXISTS \`${table}\`, \`${table}_attempts\``);
    }
  });

  it("migrateInbox is idempotent and safe to run from several processes at once; the DDL names the table", async () => {
    const table = freshTable("inbox");
    try {
      await Promise.all([migrateInbox(pool, { table }), migrateInbox(peerPool, { table })]);
      await migrateInbox(pool, { table });
      const [rows] = await pool.query<mysql.RowDataPacket[]>("SHOW TABLES LIKE ?", [`${table}%`]);
      expect(rows.map((row) => Object.values(row)[0]).sort()).toEqual([table, `${table}_attempts`]);
      expect(inboxSchemaSql({ table })).toContain(`CREATE TABLE IF NOT EXISTS \`${table}\``);
    } finally {
      await pool.query(`DROP TABLE IF EXISTS \`${table}\`, \`${table}_attempts\``);
    }
  });

  it("refuses bad options with OUTBOX_INVALID_OPTIONS; a server failure is OUTBOX_STORE_UNAVAILABLE", async () => {
    const invalid = expect.objectContaining({ code: "OUTBOX_INVALID_OPTIONS" });
    expect(() => createMySqlInboxStore({} as never)).toThrow(invalid);
    expect(() => createMySqlInboxStore({ pool, table: "bad name" })).toThrow(invalid);
    expect(() => createMySqlInboxStore({ pool, table: "t".repeat(56) })).toThrow(invalid);
    expect(() => createMySqlInboxStore({ pool, database: "no-dash" })).toThrow(invalid);
    const store = createMySqlInboxStore({ pool, table: freshTable("missing") });
    await expect(store.listDead("c", { limit: 0 })).rejects.toThrow(invalid);
    await expect(store.purge({ olderThan: new Date(Number.NaN) })).rejects.toThrow(invalid);
    await expect(store.listDead("c")).rejects.toThrow(
      expect.objectContaining({ code: "OUTBOX_STORE_UNAVAILABLE", details: expect.objectContaining({ errno: 1146 }) }),
    );
    await store.close();
    await expect(store.listDead("c")).rejects.toThrow(expect.objectContaining({ code: "OUTBOX_CLOSED" }));
  });
});

/** The tables migrateInbox() of schema v1 created (before stats()): no consumer index, no consumer of counters. */
const v1Tables = (table: string) => [
  `CREATE TABLE \`${table}\` (
    key_hash BINARY(32) NOT NULL, consumer VARCHAR(255) NOT NULL, message_id VARCHAR(1024) NOT NULL,
    status TINYINT NOT NULL DEFAULT 1, recorded_at BIGINT NOT NULL, attempts INT NOT NULL DEFAULT 0,
    last_error TEXT NULL, message LONGBLOB NULL, PRIMARY KEY (key_hash),
    KEY inbox_processed_idx (status, recorded_at), KEY inbox_dead_idx (consumer, status, message_id(400))
  ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin ROW_FORMAT=DYNAMIC`,
  `CREATE TABLE \`${table}_attempts\` (
    key_hash BINARY(32) NOT NULL, attempts INT NOT NULL, last_error TEXT NULL, updated_at BIGINT NOT NULL,
    PRIMARY KEY (key_hash), KEY inbox_attempts_at_idx (updated_at)
  ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin`,
];

/** `SELECT <n> AS g` for n in 0..10^digits - 1, portable to MySQL 8.0 and MariaDB (no sequence engine). */
const numbers = (digits: number) => {
  const digit =
    "(SELECT 0 AS d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9)";
  const tables = Array.from({ length: digits }, (_, i) => `${digit} d${i}`).join(" CROSS JOIN ");
  const value = Array.from({ length: digits }, (_, i) => `d${i}.d * ${10 ** i}`).join(" + ");
  return `SELECT ${value} AS g FROM ${tables}`;
};

describe("store-mysql inbox: stats", () => {
  it("counts 100,000 keys of 40 consumers exactly, reading one consumer through its index range (no table scan)", async () => {
    const table = freshTable("inbox");
    await migrateInbox(pool, { table });
    const n = resolveInboxNames({ table });
    const base = Date.UTC(2030, 0, 1);
    const hash = (consumer: string, id: string) => `UNHEX(SHA2(CONCAT('["', ${consumer}, '","', ${id}, '"]'), 256))`;
    try {
      // Key g (1..100,000) belongs to consumer c<g % 40> and was recorded g seconds before base; the first 400 are
      // dead letters (10 per consumer). 400 counters of messages without a key are failing (10 per consumer); one
      // more, left over by a message handled since (MySQL keeps it until purge), is not, nor is one from v1.
      await pool.query(
        `INSERT INTO ${n.qualifiedTable} (key_hash, consumer, message_id, status, recorded_at)
         SELECT ${hash("c", "m")}, c, m, IF(g <= 400, 2, 1), ? - g * 1000
         FROM (SELECT g, CONCAT('c', g % 40) AS c, CONCAT('m', g) AS m FROM (${numbers(5)}) s WHERE g >= 1
           UNION ALL SELECT 100000, 'c0', 'm100000') keys_`,
        [base],
      );
      await pool.query(
        `INSERT INTO ${n.qualifiedAttempts} (key_hash, consumer, attempts, last_error, updated_at)
         SELECT ${hash("c", "f")}, c, 1, 'boom', 0
         FROM (SELECT CONCAT('c', g % 40) AS c, IF(g = 0, 'm440', CONCAT('f', g)) AS f
           FROM (${numbers(3)}) s WHERE g <= 400) counters`,
      );
      await pool.query(
        `INSERT INTO ${n.qualifiedAttempts} (key_hash, consumer, attempts, last_error, updated_at)
         VALUES (${hash("'c0'", "'v1'")}, NULL, 1, 'boom', 0)`,
      );
      const [plan] = await pool.query<mysql.RowDataPacket[]>(`EXPLAIN ${inboxStatsSql(n, true)}`, ["c0", "c0"]);
      const reads = plan.filter((row) => row.table !== null && !String(row.table).startsWith("<"));
      expect(
        reads.map((row) => `${row.table}: ${row.key}`),
        "each table is read through the index written for it (the keys of the counters by primary key)",
      ).toEqual([`${table}: inbox_consumer_idx`, "a: inbox_attempts_consumer_idx", "k: PRIMARY"]);
      expect(
        reads.map((row) => String(row.type)),
        "an index range each, and a primary-key lookup per counter (MariaDB: unique_subquery; MySQL: eq_ref)",
      ).toEqual(["ref", "ref", expect.stringMatching(/^(eq_ref|unique_subquery)$/)]);
      expect(String(reads[0]?.Extra), "the consumer's keys come from the index alone").toContain("Using index");

      const store = createMySqlInboxStore({ pool, table });
      const c0 = {
        consumer: "c0",
        processed: 2_490,
        dead: 10,
        failing: 10,
        oldestProcessedAt: new Date(base - 100_000_000),
        newestProcessedAt: new Date(base - 440_000),
        oldestDeadAt: new Date(base - 400_000),
      };
      expect(await store.stats("c0")).toEqual([c0]);
      const all = await store.stats();
      expect(all).toHaveLength(40);
      expect(all[0]).toEqual(c0);
      expect(all.reduce((sum, stats) => sum + stats.processed + stats.dead, 0)).toBe(100_000);
      expect(all.reduce((sum, stats) => sum + stats.failing, 0)).toBe(400);
    } finally {
      await pool.query(`DROP TABLE IF EXISTS \`${table}\`, \`${table}_attempts\``);
    }
  });

  it("migrateInbox upgrades v1 tables (consumer index, consumer of counters), twice over; old counters are left out", async () => {
    const table = freshTable("inbox");
    for (const ddl of v1Tables(table)) await pool.query(ddl);
    try {
      // A counter v1 wrote: no consumer.
      await pool.query(
        `INSERT INTO \`${table}_attempts\` (key_hash, attempts, last_error, updated_at) VALUES (?, 1, 'no', 0)`,
        [inboxKeyHash("shipping", "before")],
      );
      await Promise.all([migrateInbox(pool, { table }), migrateInbox(peerPool, { table })]);
      await migrateInbox(pool, { table });
      const [keys] = await pool.query<mysql.RowDataPacket[]>(`SHOW INDEX FROM \`${table}\``);
      expect(new Set(keys.map((row) => row.Key_name))).toContain("inbox_consumer_idx");
      const [counterKeys] = await pool.query<mysql.RowDataPacket[]>(`SHOW INDEX FROM \`${table}_attempts\``);
      expect(new Set(counterKeys.map((row) => row.Key_name))).toContain("inbox_attempts_consumer_idx");

      const store = createMySqlInboxStore({ pool, table });
      const inbox = createInbox({ store, consumer: "shipping", maxAttempts: 5 });
      await expect(inbox.handle({ id: "after" }, () => Promise.reject(new Error("no")))).rejects.toThrow("no");
      expect((await inbox.handle({ id: "done" }, async () => "ok")).status).toBe("handled");
      expect(await store.stats("shipping"), "the counter written before the upgrade has no consumer").toEqual([
        expect.objectContaining({ processed: 1, failing: 1 }),
      ]);
    } finally {
      await pool.query(`DROP TABLE IF EXISTS \`${table}\`, \`${table}_attempts\``);
    }
  });
});
