// End to end on real servers: PostgreSQL outbox -> OutboxRelay -> Kafka -> kafkajs consumer -> PostgreSQL inbox.
// Mid-way the first consumer loses its offset commits and goes away (a crash after the handler's transaction
// committed, before the offset commit), so the second consumer of the group gets those messages again, and one
// handler fails once after its insert (rolled back, kafkajs seeks back and delivers it again). Every
// entry's effect row must exist exactly once, none missing, each key's effects in order.
import { OutboxRelay } from "@outbox/core";
import { createInbox, type InboxMessage } from "@outbox/inbox";
import {
  createPostgresInboxStore,
  createPostgresStore,
  migrate,
  migrateInbox,
  type Queryable,
} from "@outbox/store-postgres";
import {
  checkEffects,
  createEffects,
  distinctEffects,
  produceEntries,
  writeEffect,
} from "@outbox/test-support/inbox-effects";
import { freshIdentifier, inTransaction, pgUrl } from "@outbox/test-support/postgres";
import { waitFor } from "@outbox/test-support/wait";
import type { Consumer } from "kafkajs";
import pg from "pg";
import { describe, expect, it } from "vitest";
import { inboxEachMessage } from "../src/inbox.js";
import { createKafkaPublisher } from "../src/index.js";
import { createTopic, newKafka } from "./support/kafka.js";

const ENTRIES = 600;
const KEYS = 12;

describe("e2e: outbox -> Kafka -> inbox", () => {
  it(`applies each of ${ENTRIES} entries' effect exactly once, in key order, through a forced redelivery`, async () => {
    const schema = freshIdentifier("inbox_e2e");
    const pool = new pg.Pool({ connectionString: pgUrl, max: 6 });
    pool.on("error", () => undefined);
    const kafka = newKafka();
    const admin = kafka.admin();
    await admin.connect();
    const store = createPostgresStore({ pool, schema, listen: false, notifyChannel: false });
    const publisher = createKafkaPublisher({ kafka });
    const relay = new OutboxRelay({ store, publisher, pollMs: 50, batchSize: 100 });
    const consumers: Consumer[] = [];
    try {
      await migrate(pool, { schema });
      await migrateInbox(pool, { schema });
      await createEffects(pool, schema);
      const topic = await createTopic(admin, { partitions: 3 });

      // The producing service: per key, seq 0, 1, 2, ... in commit order.
      await produceEntries({ topic, count: ENTRIES, keys: KEYS }, (entries) =>
        inTransaction(pool, (tx) => store.enqueue(tx, entries)),
      );
      relay.start();

      // The consuming service: each message's effect row and its inbox key in one transaction.
      const inbox = createInbox({ store: createPostgresInboxStore({ pool, schema }), consumer: "e2e" });
      let failedOnce = false;
      const handler = async (tx: Queryable, message: InboxMessage) => {
        const { key, seq } = JSON.parse(new TextDecoder().decode(message.payload as Uint8Array)) as {
          key: string;
          seq: number;
        };
        await writeEffect(tx, schema, message.idempotencyKey, key, seq);
        if (message.idempotencyKey === "entry-100" && !failedOnce) {
          failedOnce = true;
          throw new Error("the handler fails once, after its insert");
        }
      };
      const outcomes = { handled: 0, duplicate: 0, dead: 0 };
      const groupId = freshIdentifier("inbox-e2e-group");
      const startConsumer = async (loseCommitsAfter: number | null) => {
        const consumer = kafka.consumer({ groupId, maxWaitTimeInMs: 100 });
        consumers.push(consumer);
        let seen = 0;
        await consumer.connect();
        await consumer.subscribe({ topic, fromBeginning: true });
        await consumer.run({
          autoCommit: false,
          eachMessage: inboxEachMessage({
            inbox,
            handler,
            consumer: {
              // Fault: past `loseCommitsAfter` messages, offset commits never reach the broker.
              commitOffsets: async (offsets) => {
                seen += 1;
                if (loseCommitsAfter !== null && seen > loseCommitsAfter) return;
                await consumer.commitOffsets(offsets);
              },
            },
            onResult: (result) => {
              outcomes[result.status] += 1;
            },
          }),
        });
        return consumer;
      };

      const first = await startConsumer(ENTRIES / 4);
      await waitFor(() => outcomes.handled >= ENTRIES / 2, 120_000, "the first consumer to handle half the entries");
      // The first consumer goes away with its last commits lost; a second one of the group takes over.
      await first.disconnect();
      const lost = outcomes.handled - ENTRIES / 4;
      await startConsumer(null);

      await waitFor(
        async () => {
          const stats = await store.stats();
          const distinct = await distinctEffects(pool, schema);
          return stats.pending === 0 && distinct === ENTRIES && outcomes.duplicate >= lost;
        },
        180_000,
        "every entry handled and the redelivered ones reported as duplicates",
      );

      const { missing, doubled, outOfOrder } = await checkEffects(pool, schema, ENTRIES);
      expect(missing, "every entry's effect row exists").toEqual([]);
      expect(doubled, "no entry's effect row exists twice").toEqual([]);
      expect(outOfOrder, "each key's effects applied in enqueue order").toEqual([]);
      expect(lost, "the fault lost some commits").toBeGreaterThan(0);
      expect(outcomes.duplicate, "the redelivered messages were reported as duplicates").toBeGreaterThanOrEqual(lost);
      expect(outcomes.handled).toBe(ENTRIES);
      expect(outcomes.dead).toBe(0);
      expect(failedOnce, "the handler failure happened (and was rolled back and redelivered)").toBe(true);
    } finally {
      for (const consumer of consumers) await consumer.disconnect().catch(() => undefined);
      await relay.stop();
      await publisher.close();
      await store.close();
      await admin.disconnect();
      await pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => undefined);
      await pool.end();
    }
  }, 300_000);
});
