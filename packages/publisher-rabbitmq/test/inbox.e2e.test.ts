// End to end on real servers: PostgreSQL outbox -> OutboxRelay -> RabbitMQ (quorum and classic) -> amqplib consumer ->
// PostgreSQL inbox. One handler fails once after its insert (rolled back, nacked with requeue, its key's later
// deliveries held back behind it). Mid-way the first consumer's acks stop reaching the broker (a crash after the
// handler's transaction committed, before the ack) until its whole prefetch window is unacked, then its channel
// closes: RabbitMQ redelivers those messages to a second consumer, where the inbox reports them as duplicates.
// Every entry's effect row must exist exactly once, none missing, each key's effects in order.
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
import type amqplib from "amqplib";
import pg from "pg";
import { describe, expect, it } from "vitest";
import { type AmqpInboxNackReason, inboxOnMessage } from "../src/inbox.js";
import { createRabbitMqPublisher } from "../src/index.js";
import { amqpUrl, connect, createQueue, deleteQueue, TEST_EXCHANGE, withChannel } from "./support/rabbit.js";

const ENTRIES = 600;
const KEYS = 12;
const PREFETCH = 20;

// A quorum queue puts a nacked message at its tail, a classic queue back at its position: the helper keeps each
// key's order on both.
describe.each(["quorum", "classic"] as const)("e2e: outbox -> RabbitMQ (%s queue) -> inbox", (type) => {
  it(`applies each of ${ENTRIES} entries' effect exactly once, in key order, through a failure and lost acks`, async () => {
    const schema = freshIdentifier("inbox_rmq_e2e");
    const pool = new pg.Pool({ connectionString: pgUrl, max: 8 });
    pool.on("error", () => undefined);
    const store = createPostgresStore({ pool, schema, listen: false, notifyChannel: false });
    const publisher = createRabbitMqPublisher({ url: amqpUrl, exchange: TEST_EXCHANGE });
    const relay = new OutboxRelay({ store, publisher, pollMs: 50, batchSize: 100 });
    const topic = await createQueue({ type }); // bound to the test exchange with its name as routing key
    const connection = await connect();
    try {
      await migrate(pool, { schema });
      await migrateInbox(pool, { schema });
      await createEffects(pool, schema);

      // The producing service: per key, seq 0, 1, 2, ... in commit order.
      await produceEntries({ topic, count: ENTRIES, keys: KEYS }, (entries) =>
        inTransaction(pool, (tx) => store.enqueue(tx, entries)),
      );
      relay.start();

      // The consuming service: each message's effect row and its inbox key in one transaction.
      const inbox = createInbox({ store: createPostgresInboxStore({ pool, schema }), consumer: "e2e" });
      let failedOnce = false;
      const mismatches: string[] = [];
      const handler = async (tx: Queryable, message: InboxMessage) => {
        const { key, seq } = JSON.parse(new TextDecoder().decode(message.payload as Uint8Array)) as {
          key: string;
          seq: number;
        };
        if (message.key !== key || message.topic !== topic)
          mismatches.push(`${message.id}: ${message.key} ${message.topic}`);
        await writeEffect(tx, schema, message.idempotencyKey, key, seq);
        if (message.idempotencyKey === "entry-100" && !failedOnce) {
          failedOnce = true;
          throw new Error("the handler fails once, after its insert");
        }
      };
      const outcomes = { handled: 0, duplicate: 0, dead: 0 };
      const nacks: Record<AmqpInboxNackReason, number> = { requeued: 0, "held-back": 0, rejected: 0, unsettled: 0 };
      let redeliveredDuplicates = 0;
      const startConsumer = async (loseAcksAfter: number | null) => {
        const channel = await connection.createChannel();
        channel.on("error", () => undefined);
        await channel.prefetch(PREFETCH);
        const lost = { count: 0 };
        let acked = 0;
        const onMessage = inboxOnMessage({
          inbox,
          handler,
          requeueDelayMs: 50,
          channel: {
            // Fault: past `loseAcksAfter` acks, acks never reach the broker (a crash right after the commit).
            ack: (message: amqplib.ConsumeMessage) => {
              acked += 1;
              if (loseAcksAfter !== null && acked > loseAcksAfter) {
                lost.count += 1;
                return;
              }
              channel.ack(message);
            },
            nack: (message: amqplib.ConsumeMessage, allUpTo?: boolean, requeue?: boolean) =>
              channel.nack(message, allUpTo, requeue),
          },
          onResult: (result, delivery) => {
            outcomes[result.status] += 1;
            if (result.status === "duplicate" && delivery.fields.redelivered) redeliveredDuplicates += 1;
          },
          onError: (_error, _delivery, reason) => {
            nacks[reason] += 1;
          },
        });
        const { consumerTag } = await channel.consume(topic, onMessage);
        return { channel, consumerTag, lost };
      };

      const first = await startConsumer(ENTRIES / 4);
      // Every slot of the first consumer's prefetch window holds a committed but unacked message: it gets no more.
      await waitFor(() => first.lost.count >= PREFETCH, 120_000, "the first consumer's window to fill with lost acks");
      await first.channel.close(); // RabbitMQ requeues every unacked delivery of the channel
      const lost = first.lost.count;
      const second = await startConsumer(null);

      await waitFor(
        async () => {
          const stats = await store.stats();
          const distinct = await distinctEffects(pool, schema);
          return stats.pending === 0 && distinct === ENTRIES && outcomes.duplicate >= lost;
        },
        180_000,
        "every entry handled and the redelivered ones reported as duplicates",
      );
      await inbox.idle();
      await second.channel.cancel(second.consumerTag);
      await second.channel.close(); // flushes the last acks before the queue is checked

      const { missing, doubled, outOfOrder } = await checkEffects(pool, schema, ENTRIES);
      expect(missing, "every entry's effect row exists").toEqual([]);
      expect(doubled, "no entry's effect row exists twice").toEqual([]);
      expect(outOfOrder, "each key's effects applied in enqueue order").toEqual([]);

      expect(mismatches, "key and topic read from the publisher's headers").toEqual([]);
      expect(lost, "the fault lost a whole prefetch window of acks").toBeGreaterThanOrEqual(PREFETCH);
      expect(outcomes.duplicate, "the redelivered messages were reported as duplicates").toBeGreaterThanOrEqual(lost);
      expect(redeliveredDuplicates, "the duplicates were RabbitMQ's redeliveries").toBeGreaterThanOrEqual(lost);
      expect(outcomes.handled).toBe(ENTRIES);
      expect(outcomes.dead).toBe(0);
      expect(failedOnce, "the handler failure happened (and was rolled back and redelivered)").toBe(true);
      expect(nacks.requeued, "the failed delivery was nacked with requeue").toBeGreaterThanOrEqual(1);
      expect(nacks.rejected).toBe(0);
      const { rows: inboxRows } = await pool.query(`SELECT count(*)::int AS n FROM "${schema}".inbox`);
      expect((inboxRows[0] as { n: number }).n, "one inbox key per entry").toBe(ENTRIES);
      const { messageCount } = await withChannel((channel) => channel.checkQueue(topic));
      expect(messageCount, "every delivery acked in the end").toBe(0);
      console.info(
        `[inbox e2e ${type}] handled ${outcomes.handled}, duplicates ${outcomes.duplicate} (lost acks ${lost}), nacks ${JSON.stringify(nacks)}`,
      );
    } finally {
      await connection.close().catch(() => undefined);
      await relay.stop();
      await publisher.close();
      await store.close();
      await deleteQueue(topic);
      await pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => undefined);
      await pool.end();
    }
  }, 300_000);
});
