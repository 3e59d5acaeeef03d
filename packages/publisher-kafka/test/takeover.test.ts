// Leader takeover on real servers: PostgreSQL store, Kafka, a Redis leader lock, relays in their
// own processes. A leader that is frozen (SIGSTOP) or deposed (its lock deleted) past its TTL
// holds leased entries; the next leader's newer fencing token takes them over at once: it
// publishes them before their lease would have let anyone else have them (the lease never comes
// into it), loses nothing and keeps per-key order. The old leader's late acks are refused by the
// store. How fast the takeover is (TTL + a claim on an idle machine) is printed, not asserted: a
// loaded CI machine can delay the next leader's first claim by seconds.
import type { ChildProcess } from "node:child_process";
import { keyOrderViolations } from "@outbox/conformance";
import { createPostgresStore, migrate } from "@outbox/store-postgres";
import { type RelayChild, startRelayChild } from "@outbox/test-support/e2e";
import { freshIdentifier, pgUrl } from "@outbox/test-support/postgres";
import { redisUrl } from "@outbox/test-support/services";
import { waitFor } from "@outbox/test-support/wait";
import { Redis } from "ioredis";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import { createTopic, newKafka, readTopic } from "./support/kafka.js";

const ENTRIES = 3_000;
const KEYS = 30;
const TTL_MS = 3_000;
const LEASE_MS = 30_000;

const children: ChildProcess[] = [];
afterAll(() => {
  for (const child of children) {
    if (child.exitCode === null) {
      child.kill("SIGCONT");
      child.kill("SIGKILL");
    }
  }
});

describe("leader takeover: PostgreSQL + Kafka + Redis lock", () => {
  for (const fault of ["frozen", "deposed"] as const) {
    it(`a ${fault} leader's claimed entries are published by the next leader before their lease ends`, async () => {
      const table = freshIdentifier("outbox_takeover");
      const lockName = freshIdentifier("leader");
      const pool = new pg.Pool({ connectionString: pgUrl, max: 4 });
      const redis = new Redis(redisUrl);
      const kafka = newKafka();
      const admin = kafka.admin();
      await admin.connect();
      const store = createPostgresStore({ pool, table, listen: false, notifyChannel: false });
      const start = (id: string): Promise<RelayChild> =>
        startRelayChild(new URL("./support/relay-child.ts", import.meta.url), {
          E2E_RELAY_ID: id,
          E2E_TABLE: table,
          E2E_BATCH: "50",
          E2E_IN_FLIGHT: "2",
          E2E_POLL_MS: "100",
          E2E_LEASE_MS: String(LEASE_MS),
          E2E_PUBLISH_DELAY_MS: "40",
          E2E_LOCK_REDIS_URL: redisUrl,
          E2E_LOCK_NAME: lockName,
          E2E_LOCK_TTL_MS: String(TTL_MS),
        });
      try {
        await migrate(pool, { table });
        const topic = await createTopic(admin, { partitions: 3 });
        const client = await pool.connect();
        try {
          await client.query("BEGIN");
          await store.enqueue(
            client,
            Array.from({ length: ENTRIES }, (_, n) => ({
              topic,
              key: `key-${n % KEYS}`,
              payload: String(n),
              headers: { "x-seq": String(Math.floor(n / KEYS)) },
              idempotencyKey: `takeover-${n}`,
            })),
          );
          await client.query("COMMIT");
        } finally {
          client.release();
        }

        const a = await start("relay-a");
        children.push(a.process);
        await waitFor(() => a.published >= 300, 60_000, "relay A to publish 300");
        const b = await start("relay-b");
        children.push(b.process);

        // Fault at a moment when A holds leased entries (it nearly always does: its broker is slow).
        // What A holds, and the earliest moment its leases would let another claimer have those
        // entries without a newer token.
        let leaseEndsAt = 0;
        const leasedByA = async () => {
          const { rows } = await pool.query(
            `SELECT id::text, (extract(epoch FROM lease_until) * 1000)::float8 AS lease_end FROM "${table}"
             WHERE status = 'pending' AND claimed_by LIKE 'relay-a#%' AND lease_until > now()`,
          );
          const leases = rows as Array<{ id: string; lease_end: number }>;
          leaseEndsAt = Math.min(...leases.map((row) => Number(row.lease_end)));
          return leases.map((row) => row.id);
        };
        let held: string[] = [];
        let faultAt = 0;
        // When B is first seen leading (it may already lead before the fault for a frozen A).
        // When a new leadership is first seen: B's, or A's again (a deposed A that lost its lock
        // may win it back before B; its new token takes its own old leases over just the same).
        const leadershipsOfA = a.leaderships.length;
        const newLeaderAt = waitFor(
          () => (b.leaderships.length > 0 || a.leaderships.length > leadershipsOfA ? Date.now() : null),
          LEASE_MS,
          "a new leadership after the fault",
        );
        newLeaderAt.catch(() => undefined); // awaited below; a timeout must fail the test there, not as unhandled
        if (fault === "frozen") {
          for (let attempt = 0; attempt < 20 && held.length === 0; attempt++) {
            a.process.kill("SIGSTOP");
            faultAt = Date.now();
            held = await leasedByA();
            if (held.length === 0) {
              a.process.kill("SIGCONT");
              await new Promise((resolve) => setTimeout(resolve, 25));
            }
          }
        } else {
          // Deposed: the lock is taken from A (its key deleted) and B acquires it while A, not
          // knowing yet, still publishes and acks under its old token. At a moment when A holds
          // leases: between two batches it holds none, so wait for one (as the frozen case does).
          let before: string[] = [];
          for (let attempt = 0; attempt < 200 && before.length === 0; attempt++) {
            before = await leasedByA();
            if (before.length === 0) await new Promise((resolve) => setTimeout(resolve, 10));
          }
          const beforeEndsAt = leaseEndsAt;
          await redis.del(`outbox:lock:{${lockName}}`);
          faultAt = Date.now();
          // What A holds as it is deposed (it finishes those batches meanwhile, so read now); if it
          // settled them in the instant between the two reads, what it held just before.
          held = await leasedByA();
          if (held.length === 0) {
            held = before;
            leaseEndsAt = beforeEndsAt;
          }
          await newLeaderAt;
        }
        expect(held.length, "relay A held leased entries at the fault").toBeGreaterThan(0);
        await waitFor(
          async () => {
            const { rows } = await pool.query(
              `SELECT count(*)::int AS n FROM "${table}" WHERE id = ANY($1::bigint[]) AND status = 'published'`,
              [held],
            );
            return rows[0].n === held.length;
          },
          LEASE_MS,
          "the next leader to publish relay A's leased entries",
        );
        const publishedAt = Date.now();
        const leaderAt = await newLeaderAt;
        console.log(
          `[takeover] ${fault}: ${held.length} entries leased by A published ${publishedAt - faultAt} ms after the fault ` +
            `(TTL ${TTL_MS} ms), ${Math.max(0, publishedAt - leaderAt)} ms after the new leadership (${b.leaderships.length > 0 ? "B" : "A again"}) was seen`,
        );
        expect(
          publishedAt,
          "the next leader took A's leased entries over at once, before their lease ran out",
        ).toBeLessThan(leaseEndsAt);
        if (fault === "frozen") {
          const { rows } = await pool.query(`SELECT DISTINCT claimed_by FROM "${table}" WHERE id = ANY($1::bigint[])`, [
            held,
          ]);
          expect(
            // Claimer names are the relay's id and its claim number.
            [...new Set(rows.map((row: { claimed_by: string }) => row.claimed_by.split("#")[0]))],
            "B took A's entries over",
          ).toEqual(["relay-b"]);
        }

        if (fault === "frozen") a.process.kill("SIGCONT");
        await waitFor(
          async () => {
            const stats = await store.stats();
            return stats.pending === 0;
          },
          120_000,
          "the outbox to drain",
        );
        for (const relay of [a, b]) relay.process.send("stop");
        expect(await a.exited).toBe(0);
        expect(await b.exited).toBe(0);

        const received = await readTopic(kafka, admin, topic, 120_000);
        const firstSeen = new Set<string>();
        const firsts: Array<{ key: string | null; seq: number }> = [];
        const byPartition = new Map<number, typeof received>();
        for (const m of received) byPartition.set(m.partition, [...(byPartition.get(m.partition) ?? []), m]);
        for (const records of byPartition.values()) {
          records.sort((x, y) => (BigInt(x.offset) < BigInt(y.offset) ? -1 : 1));
          for (const m of records) {
            if (firstSeen.has(m.idempotencyKey)) continue;
            firstSeen.add(m.idempotencyKey);
            firsts.push({ key: m.key, seq: Number(m.headers["x-seq"]) });
          }
        }
        expect(firstSeen.size, "every entry reached Kafka").toBe(ENTRIES);
        expect(keyOrderViolations(firsts)).toEqual([]);
        expect([...a.dead, ...b.dead]).toEqual([]);
        // A published some of its leased batch again after waking (a bounded duplicate) but
        // the store refused its acks: it stepped down on OUTBOX_FENCED or lost the lock.
        expect(received.length - ENTRIES).toBeLessThanOrEqual(2 * 50 * 2);
      } finally {
        await store.close().catch(() => undefined);
        await pool.query(`DROP TABLE IF EXISTS "${table}", "${table}_fence"`).catch(() => undefined);
        await pool.end();
        redis.disconnect();
        await admin.disconnect();
      }
    }, 240_000);
  }
});
