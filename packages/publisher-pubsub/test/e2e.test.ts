// End to end on real servers: PostgreSQL store -> OutboxRelay (in a child process) -> this
// publisher -> Google's Pub/Sub fake server -> a subscription with message ordering on.
// Mid-way the relay process is SIGKILLed and replaced, and the fake server is SIGKILLed and
// restarted. The fake keeps nothing in memory, so around its restart the relay is cut off by a
// TCP proxy (it sees reset and refused connections) until the subscriber has received what the
// server held and the topic and subscription are created again; the real service keeps them.
import type { ChildProcess } from "node:child_process";
import type { PubSub } from "@google-cloud/pubsub";
import { createPostgresStore, migrate } from "@outbox/store-postgres";
import { checkDelivery, enqueueSequenced, type RelayChild, startRelayChild } from "@outbox/test-support/e2e";
import { freshIdentifier, pgUrl } from "@outbox/test-support/postgres";
import { TcpProxy } from "@outbox/test-support/tcp-proxy";
import { waitFor } from "@outbox/test-support/wait";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import { type Delivered, emulatorHost, killServer, newPubSub, startServer, TopicReader } from "./support/pubsub.js";

const ENTRIES = 10_000;
const KEYS = 100;
const BATCH = 100;

function startRelay(table: string, endpoint: string): Promise<RelayChild> {
  return startRelayChild(new URL("./support/relay-child.ts", import.meta.url), {
    E2E_PUBSUB_ENDPOINT: endpoint,
    E2E_TABLE: table,
    E2E_BATCH: String(BATCH),
    E2E_POLL_MS: "50",
    E2E_LEASE_MS: "10000",
    E2E_PUBLISH_TIMEOUT_MS: "5000",
  });
}

/** The test's own messages, one per ordering key, that mark "everything before me on this key". */
const markerHeader = "e2e-marker";
const isMarker = (message: Delivered): boolean => message.headers[markerHeader] !== undefined;

async function publishMarkers(pubsub: PubSub, topicName: string): Promise<void> {
  const topic = pubsub.topic(topicName, { messageOrdering: true });
  await Promise.all(
    Array.from({ length: KEYS }, (_, i) =>
      topic.publishMessage({
        data: Buffer.from("marker"),
        orderingKey: `key-${i}`,
        attributes: { [markerHeader]: "1" },
      }),
    ),
  );
}

const children: ChildProcess[] = [];
afterAll(() => {
  for (const child of children) if (child.exitCode === null) child.kill("SIGKILL");
});

describe("e2e: PostgreSQL -> relay -> Pub/Sub", () => {
  it(`delivers ${ENTRIES} entries over ${KEYS} keys in key order through a relay kill and a server kill`, async () => {
    const table = freshIdentifier("outbox_e2e");
    const pool = new pg.Pool({ connectionString: pgUrl, max: 4 });
    const admin = newPubSub();
    const proxy = await TcpProxy.start(emulatorHost);
    const store = createPostgresStore({ pool, table, listen: false, notifyChannel: false });
    const reader = await TopicReader.create(admin);
    try {
      await migrate(pool, { table });
      const topic = reader.topic;
      await reader.receive(0, 0); // listening from now on

      // Enqueue in the application's transactions: per key, seq 0..99 in commit order.
      const seqOf = await enqueueSequenced(pool, store, { entries: ENTRIES, keys: KEYS, topic });

      // Fault (a): the relay process dies mid-way, without stop(); a new one takes over.
      const first = await startRelay(table, proxy.endpoint);
      children.push(first.process);
      await waitFor(() => first.published >= 2_500, 120_000, "the first relay to publish 2,500");
      first.process.kill("SIGKILL");
      await first.exited;
      const second = await startRelay(table, proxy.endpoint);
      children.push(second.process);

      // Fault (b): the server is SIGKILLed and restarted while the relay runs.
      await waitFor(() => first.published + second.published >= 5_500, 120_000, "5,500 published");
      const cutAt = Date.now();
      proxy.cut();
      // Everything the server took reaches the subscriber before the in-memory server dies (what
      // it confirmed may still be on its way to the store as acks). With the relay cut off, a
      // marker published now on every ordering key comes after all of that key's messages, and
      // the subscription delivers each key in order: once every marker arrived, nothing is left.
      await publishMarkers(admin, topic);
      await reader.until(
        (delivered) => delivered.filter(isMarker).length === KEYS,
        60_000,
        "the subscriber to receive every key's marker before the kill",
      );
      // The store's acked entries (ids, not counts) are among them.
      const { rows } = await pool.query(
        `SELECT coalesce(idempotency_key, id::text) AS idem FROM "${table}" WHERE status = 'published'`,
      );
      const arrived = new Set(reader.delivered.map((m) => m.idempotencyKey));
      expect((rows as Array<{ idem: string }>).filter((row) => !arrived.has(row.idem))).toEqual([]);
      await killServer();
      await startServer();
      await reader.recreate();
      await reader.receive(0, 0);
      proxy.restore();
      const outageMs = Date.now() - cutAt;

      await waitFor(
        async () => {
          const stats = await store.stats();
          return stats.pending === 0 && stats.inFlight === 0;
        },
        240_000,
        "the outbox to drain",
      );
      const stats = await store.stats();
      second.process.send("stop");
      expect(await second.exited).toBe(0);

      const received = (
        await reader.until(
          (delivered) => new Set(delivered.filter((m) => !isMarker(m)).map((m) => m.idempotencyKey)).size >= ENTRIES,
          120_000,
        )
      ).filter((m) => !isMarker(m));
      // The subscription delivers each ordering key in order.
      const { distinct, duplicates, orderViolations, wrongSeq } = checkDelivery(received, seqOf);
      const misKeyed = received.filter((m) => m.key !== `key-${Number(m.idempotencyKey.slice(4)) % KEYS}`);
      console.log(
        `[e2e] received ${received.length} messages, ${distinct} distinct, ${duplicates} duplicates; ` +
          `relay 1 published ${first.published}, relay 2 ${second.published}; relay cut off ${outageMs} ms ` +
          `(server killed and restarted within); relay 2 retried ${second.retried} times, errors ${second.errors.length}; ` +
          `store ${JSON.stringify(stats)}`,
      );
      expect(first.dead).toEqual([]);
      expect(second.dead).toEqual([]);
      expect(stats.dead).toBe(0);
      expect(second.retried + second.errors.length).toBeGreaterThan(0);
      expect(distinct).toBe(ENTRIES);
      expect(wrongSeq).toEqual([]);
      expect(misKeyed).toEqual([]);
      expect(orderViolations).toEqual([]);
      // Duplicates only from the batches in flight at the two faults (two per relay by default).
      expect(duplicates).toBeLessThanOrEqual(2 * 2 * BATCH);
    } finally {
      await reader.close();
      await store.close().catch(() => undefined);
      await pool.query(`DROP TABLE IF EXISTS "${table}", "${table}_fence"`).catch(() => undefined);
      await pool.end();
      await admin.close();
      await proxy.close();
    }
  }, 420_000);
});
