// End to end on real servers: PostgreSQL store -> OutboxRelay (in a child process) -> this
// publisher -> Apache Kafka -> a kafkajs consumer. Mid-way the relay process is SIGKILLed and
// replaced, and the broker is killed and restarted on its data.
import type { ChildProcess } from "node:child_process";
import { createPostgresStore, migrate } from "@outbox/store-postgres";
import { checkDelivery, enqueueSequenced, type RelayChild, startRelayChild } from "@outbox/test-support/e2e";
import { freshIdentifier, pgUrl } from "@outbox/test-support/postgres";
import { waitFor } from "@outbox/test-support/wait";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import { createTopic, newKafka, readTopic, restartBrokerKeepingData } from "./support/kafka.js";

const ENTRIES = 10_000;
const KEYS = 100;
const BATCH = 100;
/** Batches the relay keeps in flight: each fault may replay all of them. */
const IN_FLIGHT = 2;

function startRelay(table: string): Promise<RelayChild> {
  return startRelayChild(new URL("./support/relay-child.ts", import.meta.url), {
    E2E_TABLE: table,
    E2E_BATCH: String(BATCH),
    E2E_IN_FLIGHT: String(IN_FLIGHT),
    E2E_POLL_MS: "50",
    E2E_LEASE_MS: "10000",
    E2E_PUBLISH_TIMEOUT_MS: "8000",
  });
}

const children: ChildProcess[] = [];
afterAll(() => {
  for (const child of children) if (child.exitCode === null) child.kill("SIGKILL");
});

describe("e2e: PostgreSQL -> relay -> Kafka", () => {
  it(`delivers ${ENTRIES} entries over ${KEYS} keys through a relay kill and a broker restart`, async () => {
    const table = freshIdentifier("outbox_e2e");
    const pool = new pg.Pool({ connectionString: pgUrl, max: 4 });
    const kafka = newKafka();
    const admin = kafka.admin();
    await admin.connect();
    const store = createPostgresStore({ pool, table, listen: false, notifyChannel: false });
    try {
      await migrate(pool, { table });
      const topic = await createTopic(admin, { partitions: 3 });

      // Enqueue in the application's transactions: per key, seq 0..99 in commit order.
      const seqOf = await enqueueSequenced(pool, store, { entries: ENTRIES, keys: KEYS, topic });

      // Fault (a): the relay process dies mid-way, without stop(); a new one takes over.
      const first = await startRelay(table);
      children.push(first.process);
      await waitFor(() => first.published >= 2_500, 120_000, "the first relay to publish 2,500");
      first.process.kill("SIGKILL");
      await first.exited;
      const second = await startRelay(table);
      children.push(second.process);

      // Fault (b): the broker is killed and restarted on its data while the relay runs.
      await waitFor(() => first.published + second.published >= 5_500, 120_000, "5,500 published");
      const outageMs = await restartBrokerKeepingData("SIGKILL");

      await waitFor(
        async () => {
          const stats = await store.stats();
          return stats.pending === 0 && stats.inFlight === 0;
        },
        180_000,
        "the outbox to drain",
      );
      const stats = await store.stats();
      second.process.send("stop");
      expect(await second.exited).toBe(0);

      const received = await readTopic(kafka, admin, topic, 120_000);
      // Per partition, in offset order (readTopic returns each partition's records in order);
      // a key lives on one partition, so this is the key's order in the log.
      const byPartition = new Map<number, typeof received>();
      for (const m of received) {
        const records = byPartition.get(m.partition);
        if (records) records.push(m);
        else byPartition.set(m.partition, [m]);
      }
      const inLogOrder = [...byPartition.values()].flatMap((records) =>
        records.sort((x, y) => (BigInt(x.offset) < BigInt(y.offset) ? -1 : 1)),
      );
      const { distinct, duplicates, orderViolations, wrongSeq } = checkDelivery(inLogOrder, seqOf);
      const counts = new Map<string, number>();
      for (const m of received) counts.set(m.idempotencyKey, (counts.get(m.idempotencyKey) ?? 0) + 1);
      const duplicated = [...counts]
        .filter(([, c]) => c > 1)
        .map(([k]) => Number(k.slice(4)))
        .sort((a, b) => a - b);
      console.log(`[e2e] duplicated entries (first 20): ${duplicated.slice(0, 20).join(",")}`);
      console.log(
        `[e2e] received ${received.length} records, ${distinct} distinct, ${duplicates} duplicates; ` +
          `relay 1 published ${first.published}, relay 2 ${second.published}; broker down ${outageMs} ms; ` +
          `relay 2 retried ${second.retried} times, errors ${second.errors.length}; store ${JSON.stringify(stats)}`,
      );
      expect(first.dead).toEqual([]);
      expect(second.dead).toEqual([]);
      expect(stats.dead).toBe(0);
      // The running relay lived through the outage: it saw it (transient outcomes or reported
      // errors; a publish may also ride the outage out inside the producer's own retries).
      expect(second.retried + second.errors.length).toBeGreaterThan(0);
      // Every entry at least once.
      expect(distinct).toBe(ENTRIES);
      expect(wrongSeq).toEqual([]);
      // Per key, first occurrences in enqueue order, without gaps.
      expect(orderViolations).toEqual([]);
      // Duplicates only from the batches in flight at each of the two faults.
      expect(duplicates).toBeLessThanOrEqual(2 * IN_FLIGHT * BATCH);
    } finally {
      await store.close().catch(() => undefined);
      await pool.query(`DROP TABLE IF EXISTS "${table}", "${table}_fence"`).catch(() => undefined);
      await pool.end();
      await admin.disconnect();
    }
  }, 300_000);
});
