// The claim against the traps production sets and a freshly analyzed test table never shows:
// statistics that say nothing is pending, a frozen relay holding the heads of many keys, a slow
// statement holding what every relay needs. Real PostgreSQL 15.
import { keyOrderViolations } from "@outbox/conformance";
import { type OutboxEntry, OutboxError, OutboxErrorCode, type OutboxMessage } from "@outbox/core";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import { claimSql } from "../src/claim.js";
import { createPostgresStore, migrate, type PostgresStore } from "../src/index.js";
import { resolveNames } from "../src/schema.js";
import { createPool, freshSchema, inTransaction, pgUrl } from "./helpers.js";

const admin = createPool({ max: 6, application_name: "outbox-test-claim" });
afterAll(() => admin.end());

const KEYS = 40;
const seqOf = (entry: OutboxEntry) => Number(entry.headers.seq);

function messages(count: number, from = 0): OutboxMessage[] {
  return Array.from({ length: count }, (_, i) => ({
    topic: "t",
    key: `key-${(from + i) % KEYS}`,
    payload: `entry-${from + i}`,
    headers: { seq: String(from + i) },
  }));
}

/**
 * A table whose statistics say no entry is pending (analyzed while every row was published,
 * autovacuum off) while `pending` entries over KEYS keys are, and a frozen claimer holding the
 * heads of the first half of the keys: each of those keys is a wall of blocked entries.
 */
async function staleTable(pending: number): Promise<{ schema: string; store: PostgresStore; drop(): Promise<void> }> {
  const schema = freshSchema();
  const table = `"${schema}".outbox`;
  await migrate(admin, { schema });
  await admin.query(`ALTER TABLE ${table} SET (autovacuum_enabled = false)`);
  const store = createPostgresStore({ pool: admin, schema, listen: false, onError: () => undefined });
  await inTransaction(admin, (tx) => store.enqueue(tx, messages(2_000, -2_000)));
  await admin.query(`UPDATE ${table} SET status = 'published', settled_at = now()`);
  await admin.query(`ANALYZE ${table}`);
  for (let done = 0; done < pending; done += 1_000) {
    await inTransaction(admin, (tx) => store.enqueue(tx, messages(Math.min(1_000, pending - done), done)));
  }
  const frozen = await store.claim({ claimer: "frozen", limit: KEYS / 2, leaseMs: 3_600_000 });
  expect(new Set(frozen.map((entry) => entry.key)).size).toBe(KEYS / 2);
  return {
    schema,
    store,
    async drop() {
      await store.close();
      await admin.query(`DROP SCHEMA "${schema}" CASCADE`);
    },
  };
}

interface PlanNode {
  "Node Type": string;
  "Subplan Name"?: string;
  "Relation Name"?: string;
  "Index Name"?: string;
  Plans?: PlanNode[];
}

/** How each CTE of a plan reads the outbox table: "near: Index Scan outbox_pending_idx", ... */
function outboxScans(node: PlanNode, cte = "main"): string[] {
  const name = node["Subplan Name"]?.startsWith("CTE ") ? node["Subplan Name"].slice(4) : cte;
  const scansOutbox = node["Relation Name"] === "outbox" && node["Node Type"] !== "ModifyTable";
  const how = `${name}: ${node["Node Type"]}${node["Index Name"] ? ` ${node["Index Name"]}` : ""}`;
  return [...(scansOutbox ? [how] : []), ...(node.Plans ?? []).flatMap((child) => outboxScans(child, name))];
}

describe("claims under stale statistics", () => {
  it("every scan of the outbox is an index scan of the index written for it, a ctid or a primary-key lookup", async () => {
    const table = await staleTable(20_000);
    try {
      const estimate = await admin.query(`EXPLAIN SELECT id FROM "${table.schema}".outbox WHERE status = 'pending'`);
      expect(String(estimate.rows[0]["QUERY PLAN"]), "the statistics must be stale for this test").toMatch(/rows=1 /);
      for (const fenced of [false, true]) {
        const now = new Date().toISOString();
        const params = [now, now, "c", "", "0", ...(fenced ? ["lock", "1"] : [])];
        const { rows } = await admin.query(
          `EXPLAIN (FORMAT JSON) ${claimSql(resolveNames({ schema: table.schema }), 256, fenced)}`,
          params,
        );
        const plan = (rows[0]["QUERY PLAN"] as Array<{ Plan: PlanNode }>)[0]?.Plan as PlanNode;
        expect([...new Set(outboxScans(plan))].sort()).toEqual([
          "claimed: Index Scan outbox_pkey",
          "far: Index Scan outbox_pending_idx",
          "keyless: Index Scan outbox_open_key_idx",
          "locked: Tid Scan",
          "near: Index Scan outbox_pending_idx",
          "walk: Index Scan outbox_open_key_idx",
        ]);
      }
    } finally {
      await table.drop();
    }
  });

  it("keys behind a wall of a frozen claimer's blocked entries still drain, in key order", async () => {
    const table = await staleTable(6_000);
    try {
      const delivered: OutboxEntry[] = [];
      for (let round = 0; round < 400 && delivered.length < 3_000; round++) {
        const batch = await table.store.claim({ claimer: "relay", limit: 32, leaseMs: 60_000 });
        await table.store.ack(
          batch.map((entry) => entry.id),
          { claimer: "relay" },
        );
        delivered.push(...batch);
      }
      const frozenKeys = new Set(Array.from({ length: KEYS / 2 }, (_, i) => `key-${i}`));
      expect(delivered.filter((entry) => frozenKeys.has(entry.key as string))).toEqual([]);
      expect(delivered, "every entry of the keys the frozen claimer does not hold").toHaveLength(3_000);
      expect(keyOrderViolations(delivered.map((entry) => ({ key: entry.key, seq: seqOf(entry) })))).toEqual([]);
    } finally {
      await table.drop();
    }
  });
});

describe("no statement stalls the outbox", () => {
  it("a fenced ack with the newest token does not wait for a fenced claim of the same lock still running", async () => {
    const schema = freshSchema();
    await migrate(admin, { schema });
    // Any wait for a lock fails this pool's statements after 5 s instead of hanging.
    const pool = new pg.Pool({ connectionString: pgUrl, max: 2, lock_timeout: 5_000 });
    const store = createPostgresStore({ pool, schema, listen: false });
    const fence = { lock: "leader", token: 7n };
    const open = await admin.connect();
    try {
      await inTransaction(admin, (tx) => store.enqueue(tx, messages(20)));
      const first = await store.claim({ claimer: "a", limit: 10, leaseMs: 60_000, fence });
      // A claim of the same leader whose transaction stays open: it holds what it took until COMMIT.
      await open.query("BEGIN");
      const slow = createPostgresStore({ db: open, schema, listen: false });
      expect(await slow.claim({ claimer: "a", limit: 10, leaseMs: 60_000, fence })).toHaveLength(10);
      await store.ack(
        first.map((entry) => entry.id),
        { claimer: "a", fence },
      );
      const { rows } = await admin.query(
        `SELECT count(*)::int AS n FROM "${schema}".outbox WHERE status = 'published'`,
      );
      expect(rows[0].n).toBe(10);
      await slow.close();
    } finally {
      await open.query("ROLLBACK").catch(() => undefined);
      open.release();
      await store.close();
      await pool.end();
      await admin.query(`DROP SCHEMA "${schema}" CASCADE`);
    }
  });

  it("a claim longer than claimTimeoutMs fails with OUTBOX_STORE_UNAVAILABLE (sqlState 57014), the next one succeeds", async () => {
    const schema = freshSchema();
    await migrate(admin, { schema });
    const pool = new pg.Pool({ connectionString: pgUrl, max: 2 });
    const store = createPostgresStore({ pool, schema, listen: false, claimTimeoutMs: 300 });
    const holder = await admin.connect();
    try {
      await inTransaction(admin, (tx) => store.enqueue(tx, messages(5)));
      const [held] = await store.claim({
        claimer: "a",
        limit: 1,
        leaseMs: 60_000,
        fence: { lock: "leader", token: 1n },
      });
      // Another session holds the fence row. A claim with a newer token must write that row, so
      // it waits for the lock until its statement timeout cancels it.
      await holder.query("BEGIN");
      await holder.query(`SELECT * FROM "${schema}".outbox_fence FOR UPDATE`);
      const error = await store
        .claim({ claimer: "a", limit: 1, leaseMs: 60_000, fence: { lock: "leader", token: 2n } })
        .then(
          () => null,
          (caught: unknown) => caught,
        );
      expect(OutboxError.is(error, OutboxErrorCode.StoreUnavailable)).toBe(true);
      expect((error as OutboxError).details).toMatchObject({ operation: "claim", sqlState: "57014", timeoutMs: 300 });
      await holder.query("ROLLBACK");
      const next = await store.claim({ claimer: "a", limit: 1, leaseMs: 60_000, fence: { lock: "leader", token: 2n } });
      expect(
        next.map((entry) => entry.id),
        "the newer token takes over what the older one leased",
      ).toEqual([held?.id]);
    } finally {
      await holder.query("ROLLBACK").catch(() => undefined);
      holder.release();
      await store.close();
      await pool.end();
      await admin.query(`DROP SCHEMA "${schema}" CASCADE`);
    }
  });
});
