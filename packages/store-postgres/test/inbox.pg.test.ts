import { describeInboxStoreConformance } from "@outbox/conformance/inbox";
import { createInbox, type InboxMessage } from "@outbox/inbox";
import { afterAll, describe, expect, it } from "vitest";
import { inboxStatsSql, resolveInboxNames } from "../src/inbox.js";
import { createPostgresInboxStore, createPostgresStore, migrate, migrateInbox, type Queryable } from "../src/index.js";
import { createPool, freshSchema } from "./helpers.js";
import { pgInboxHarness } from "./inbox-helpers.js";

// Two pools: the kit's concurrent deliveries race two independent store instances (two consumer processes).
const pool = createPool({ max: 6, application_name: "outbox-inbox-conformance" });
const peerPool = createPool({ max: 4, application_name: "outbox-inbox-conformance-peer" });
afterAll(async () => {
  await pool.end();
  await peerPool.end();
});

describeInboxStoreConformance({
  name: "store-postgres inbox (pg Pool, PostgreSQL 15)",
  create: (clock) => pgInboxHarness(clock, pool, peerPool),
});

describe("store-postgres inbox: chaining into the outbox", () => {
  it("follow-up outbox entries enqueued on the handler's transaction commit with the key, or not at all", async () => {
    const schema = freshSchema();
    await migrate(pool, { schema });
    await migrateInbox(pool, { schema });
    const outbox = createPostgresStore({ pool, schema, listen: false, notifyChannel: false });
    const inbox = createInbox({ store: createPostgresInboxStore({ pool, schema }), maxAttempts: 10 });
    try {
      const forward = (fail: boolean) => async (tx: Queryable, message: InboxMessage) => {
        await outbox.enqueue(tx, { topic: "payments.requested", key: message.key, payload: `for ${message.id}` });
        if (fail) throw new Error("fails after the enqueue");
      };
      const message: InboxMessage = { id: "order-1", key: "customer-7" };
      await expect(inbox.handle(message, forward(true))).rejects.toThrow("fails after the enqueue");
      expect((await outbox.stats()).pending, "a rolled-back handler leaves no follow-up entry").toBe(0);
      expect((await inbox.handle(message, forward(false))).status).toBe("handled");
      expect((await inbox.handle(message, forward(false))).status).toBe("duplicate");
      expect((await outbox.stats()).pending, "one follow-up entry, whatever the redeliveries").toBe(1);
    } finally {
      await outbox.close();
      await pool.query(`DROP SCHEMA "${schema}" CASCADE`);
    }
  });

  it("refuses bad options with OUTBOX_INVALID_OPTIONS", () => {
    expect(() => createPostgresInboxStore({} as never)).toThrow(
      expect.objectContaining({ code: "OUTBOX_INVALID_OPTIONS" }),
    );
    expect(() => createPostgresInboxStore({ pool, table: "bad name" })).toThrow(
      expect.objectContaining({ code: "OUTBOX_INVALID_OPTIONS" }),
    );
  });
});

interface PlanNode {
  "Node Type": string;
  "Relation Name"?: string;
  "Index Name"?: string;
  Plans?: PlanNode[];
}

/** Every read of a table in a plan: "inbox: Index Only Scan inbox_consumer_idx", ... */
function tableScans(node: PlanNode): string[] {
  const own = node["Relation Name"]
    ? [`${node["Relation Name"]}: ${node["Node Type"]}${node["Index Name"] ? ` ${node["Index Name"]}` : ""}`]
    : [];
  return [...own, ...(node.Plans ?? []).flatMap(tableScans)];
}

describe("store-postgres inbox: stats", () => {
  it("counts 100,000 keys of 40 consumers exactly, reading one consumer through its index range (no table scan)", async () => {
    const schema = freshSchema();
    await migrateInbox(pool, { schema });
    const n = resolveInboxNames({ schema });
    const base = Date.UTC(2030, 0, 1);
    try {
      // Key g belongs to consumer c<g % 40> and was recorded g seconds before base; the first 400 are dead letters
      // (10 per consumer). 400 attempt counters of messages without a key are failing (10 per consumer); one more,
      // left over by a message handled since, is not.
      await pool.query(
        `INSERT INTO ${n.qualifiedTable} (consumer, message_id, status, recorded_at)
         SELECT 'c' || (g % 40), 'm' || g, CASE WHEN g <= 400 THEN 'dead' ELSE 'processed' END,
           $1::timestamptz - g * interval '1 second'
         FROM generate_series(1, 100000) g`,
        [new Date(base).toISOString()],
      );
      await pool.query(
        `INSERT INTO ${n.qualifiedAttempts} (consumer, message_id, attempts, last_error, updated_at)
         SELECT 'c' || (g % 40), CASE WHEN g = 0 THEN 'm440' ELSE 'f' || g END, 1, 'boom', now()
         FROM generate_series(0, 400) g`,
      );
      await pool.query(`VACUUM ANALYZE ${n.qualifiedTable}, ${n.qualifiedAttempts}`);

      const { rows } = await pool.query(`EXPLAIN (FORMAT JSON) ${inboxStatsSql(n, true)}`, ["c0"]);
      const scans = tableScans((rows[0]["QUERY PLAN"] as Array<{ Plan: PlanNode }>)[0]?.Plan as PlanNode);
      expect(
        scans.filter((scan) => scan.includes("Seq Scan")),
        `no table scan (${scans.join(", ")})`,
      ).toEqual([]);
      expect(scans, "the consumer's keys come from the consumer index alone").toContain(
        "inbox: Index Only Scan inbox_consumer_idx",
      );

      const store = createPostgresInboxStore({ pool, schema });
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
      await pool.query(`DROP SCHEMA "${schema}" CASCADE`);
    }
  });
});
