// End to end on real servers: PostgreSQL store -> OutboxRelay (in a child process) -> this
// publisher -> RabbitMQ (quorum queue) -> an amqplib consumer. Mid-way the relay process is
// SIGKILLed and replaced, and the broker closes every connection (rabbitmqctl close_all_connections).
import type { ChildProcess } from "node:child_process";
import { createPostgresStore, migrate } from "@outbox/store-postgres";
import { checkDelivery, enqueueSequenced, type RelayChild, startRelayChild } from "@outbox/test-support/e2e";
import { freshIdentifier, pgUrl } from "@outbox/test-support/postgres";
import { waitFor } from "@outbox/test-support/wait";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import {
  amqpUrl,
  closeAllConnections,
  createQueue,
  deleteQueue,
  QueueReader,
  TEST_EXCHANGE,
} from "./support/rabbit.js";

const ENTRIES = 10_000;
const KEYS = 100;
const BATCH = 100;

function startRelay(table: string): Promise<RelayChild> {
  return startRelayChild(new URL("./support/relay-child.ts", import.meta.url), {
    OUTBOX_AMQP_URL: amqpUrl,
    E2E_TABLE: table,
    E2E_EXCHANGE: TEST_EXCHANGE,
    E2E_BATCH: String(BATCH),
    E2E_POLL_MS: "50",
    E2E_LEASE_MS: "10000",
    E2E_PUBLISH_TIMEOUT_MS: "8000",
  });
}

const children: ChildProcess[] = [];
afterAll(() => {
  for (const child of children) if (child.exitCode === null) child.kill("SIGKILL");
});

describe("e2e: PostgreSQL -> relay -> RabbitMQ", () => {
  it(`delivers ${ENTRIES} entries over ${KEYS} keys through a relay kill and close_all_connections`, async () => {
    const table = freshIdentifier("outbox_e2e");
    const pool = new pg.Pool({ connectionString: pgUrl, max: 4 });
    const store = createPostgresStore({ pool, table, listen: false, notifyChannel: false });
    const topic = await createQueue();
    try {
      await migrate(pool, { table });
      // Enqueue in the application's transactions: per key, seq 0..99 in commit order.
      const seqOf = await enqueueSequenced(pool, store, {
        entries: ENTRIES,
        keys: KEYS,
        topic,
        headers: { "content-type": "application/json" },
      });

      // Fault (a): the relay process dies mid-way, without stop(); a new one takes over.
      const first = await startRelay(table);
      children.push(first.process);
      await waitFor(() => first.published >= 2_500, 120_000, "the first relay to publish 2,500");
      first.process.kill("SIGKILL");
      await first.exited;
      const second = await startRelay(table);
      children.push(second.process);

      // Fault (b): the broker drops every client connection while the relay runs.
      await waitFor(() => first.published + second.published >= 4_000, 120_000, "4,000 published");
      await closeAllConnections("e2e: close_all_connections");

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

      const reader = new QueueReader();
      let received = await reader.receive(topic, ENTRIES, 120_000);
      // Everything the queue holds, duplicates included.
      for (;;) {
        const more = await reader.receive(topic, received.length + 1, 3_000);
        if (more.length <= received.length) break;
        received = more;
      }
      // One queue, one publisher channel at a time: the queue's order is the publish order.
      const { distinct, duplicates, orderViolations, wrongSeq } = checkDelivery(received, seqOf);
      console.log(
        `[e2e] received ${received.length} messages, ${distinct} distinct, ${duplicates} duplicates; ` +
          `relay 1 published ${first.published}, relay 2 ${second.published}; ` +
          `relay 2 retried ${second.retried} times, errors ${second.errors.length}, connections ${second.connections}; store ${JSON.stringify(stats)}`,
      );
      expect(first.dead).toEqual([]);
      expect(second.dead).toEqual([]);
      expect(stats.dead).toBe(0);
      // The broker's close reached the running relay: its publisher connected again.
      expect(second.connections).toBeGreaterThanOrEqual(2);
      expect(distinct).toBe(ENTRIES);
      expect(wrongSeq).toEqual([]);
      expect(orderViolations).toEqual([]);
      // Duplicates only from the batch in flight at each of the two faults.
      expect(duplicates).toBeLessThanOrEqual(2 * BATCH);
    } finally {
      await store.close().catch(() => undefined);
      await pool.query(`DROP TABLE IF EXISTS "${table}", "${table}_fence"`).catch(() => undefined);
      await pool.end();
      await deleteQueue(topic);
    }
  }, 300_000);
});
