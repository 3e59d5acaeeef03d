// End to end on real servers: PostgreSQL outbox -> OutboxRelay -> Pub/Sub (the pstest fake, a subscription with
// message ordering on) -> @google-cloud/pubsub's streaming subscriber -> inboxMessageHandler -> PostgreSQL inbox.
// Forced redeliveries on the way: some handlers fail once after their insert (rolled back, nacked, Pub/Sub delivers
// the message again before the key's later ones), some messages lose their ack after the commit (a nack stands in
// for the ack deadline passing: Pub/Sub delivers the handled message again), and some are handed to the listener
// twice. Every entry's effect row must exist exactly once, none missing, each key's effects in enqueue order.
import type { Message, Subscription } from "@google-cloud/pubsub";
import { OutboxHeader, OutboxRelay } from "@outbox/core";
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
import pg from "pg";
import { describe, expect, it } from "vitest";
import { inboxMessageHandler, type PubSubInboxNackReason, type PubSubMessageLike } from "../src/inbox.js";
import { createPubSubPublisher } from "../src/index.js";
import { newPubSub, uniqueTopic } from "./support/pubsub.js";

const ENTRIES = 300;
const KEYS = 10;

/** The handler's injected failure (told apart from any other error by its class). */
class InjectedFailure extends Error {}

const entryIds = (pick: (i: number) => boolean) =>
  new Set(
    Array.from({ length: ENTRIES }, (_, i) => i)
      .filter(pick)
      .map((i) => `entry-${i}`),
  );

describe("e2e: outbox -> Pub/Sub -> inbox", () => {
  it(`applies each of ${ENTRIES} entries' effect exactly once, in key order, through nacks and redeliveries`, async () => {
    const schema = freshIdentifier("pubsub_inbox_e2e");
    const pool = new pg.Pool({ connectionString: pgUrl, max: 6 });
    pool.on("error", () => undefined);
    const pubsub = newPubSub(); // the producing side (and the admin)
    const consumerClient = newPubSub(); // the consuming service's own client
    const store = createPostgresStore({ pool, schema, listen: false, notifyChannel: false });
    const publisher = createPubSubPublisher({ pubsub });
    const relay = new OutboxRelay({ store, publisher, pollMs: 50, batchSize: 100 });
    const inbox = createInbox({ store: createPostgresInboxStore({ pool, schema }), consumer: "e2e" });
    const topic = uniqueTopic("inbox-e2e");
    const subscriptionName = `${topic}-sub`;
    let subscription: Subscription | undefined;
    try {
      await migrate(pool, { schema });
      await migrateInbox(pool, { schema });
      await createEffects(pool, schema);
      // Before anything is published: Pub/Sub delivers only what was published after the subscription exists.
      await pubsub.createTopic(topic);
      await pubsub.createSubscription(topic, subscriptionName, { enableMessageOrdering: true });

      // The producing service: per key, seq 0, 1, 2, ... in commit order.
      await produceEntries({ topic, count: ENTRIES, keys: KEYS }, (entries) =>
        inTransaction(pool, (tx) => store.enqueue(tx, entries)),
      );
      relay.start();

      // The faults, on disjoint sets of entries.
      const failOnce = entryIds((i) => i % 25 === 3);
      const loseAck = entryIds((i) => i % 25 === 11);
      const deliverTwice = entryIds((i) => i % 25 === 19);
      const failed = new Set<string>();
      const ackLost = new Set<string>();

      // The consuming service: each message's effect row and its inbox key in one transaction.
      const handler = async (tx: Queryable, message: InboxMessage) => {
        const { key, seq } = JSON.parse(new TextDecoder().decode(message.payload as Uint8Array)) as {
          key: string;
          seq: number;
        };
        const id = message.idempotencyKey as string;
        await writeEffect(tx, schema, id, key, seq);
        if (failOnce.has(id) && !failed.has(id)) {
          failed.add(id);
          throw new InjectedFailure(`${id} fails once, after its insert`);
        }
      };
      const outcomes = { handled: 0, duplicate: 0, dead: 0 };
      const nacks: Array<{ id: string; reason: PubSubInboxNackReason; error: unknown }> = [];
      const onMessage = inboxMessageHandler({
        inbox,
        handler,
        onResult: (result) => {
          outcomes[result.status] += 1;
        },
        onError: (error, message, reason) => {
          nacks.push({ id: message.attributes[OutboxHeader.IdempotencyKey] as string, reason, error });
        },
      });
      // The listener fits @google-cloud/pubsub's "message" event as it is.
      const listener: (message: Message) => void = onMessage;

      const subscriberErrors: unknown[] = [];
      subscription = consumerClient.subscription(subscriptionName, {
        flowControl: { maxMessages: 50 }, // the messages in hand: handlers in flight are at most one per key
        batching: { maxMilliseconds: 10 }, // acks and nacks reach the server within 10 ms
      });
      subscription.on("error", (error) => subscriberErrors.push(error));
      subscription.on("message", (message: Message) => {
        const id = message.attributes[OutboxHeader.IdempotencyKey] as string;
        if (loseAck.has(id) && !ackLost.has(id)) {
          // Fault: this delivery's ack never reaches Pub/Sub, which delivers the message again.
          ackLost.add(id);
          const lost: PubSubMessageLike = {
            id: message.id,
            data: message.data,
            attributes: message.attributes,
            orderingKey: message.orderingKey,
            ack: () => message.nack(),
            nack: () => message.nack(),
          };
          void onMessage(lost);
          return;
        }
        listener(message);
        // Fault: the same delivery handed to the listener a second time.
        if (deliverTwice.has(id)) listener(message);
      });

      const redelivered = loseAck.size + deliverTwice.size;
      await waitFor(
        async () => {
          const stats = await store.stats();
          const distinct = await distinctEffects(pool, schema);
          return (
            stats.pending === 0 &&
            distinct === ENTRIES &&
            outcomes.handled === ENTRIES &&
            outcomes.duplicate >= redelivered
          );
        },
        120_000,
        "every entry handled and the redelivered ones reported as duplicates",
      );
      await subscription.close();
      await inbox.idle();

      const { missing, doubled, outOfOrder } = await checkEffects(pool, schema, ENTRIES);
      expect(missing, "every entry's effect row exists").toEqual([]);
      expect(doubled, "no entry's effect row exists twice").toEqual([]);
      expect(outOfOrder, "each key's effects applied in enqueue order").toEqual([]);

      expect(failed, "every injected handler failure happened").toEqual(failOnce);
      const nacked = nacks.filter((nack) => nack.reason === "nacked");
      expect(new Set(nacked.map((nack) => nack.id)), "each failed message was nacked").toEqual(failOnce);
      expect(
        nacks.filter((nack) => !(nack.error instanceof InjectedFailure)),
        "no other failure was reported",
      ).toEqual([]);
      expect(ackLost, "every lost ack happened").toEqual(loseAck);
      expect(outcomes.handled, "each entry's transaction committed once").toBe(ENTRIES);
      expect(outcomes.duplicate, "the redelivered messages were reported as duplicates").toBeGreaterThanOrEqual(
        redelivered,
      );
      expect(outcomes.dead).toBe(0);
      expect(subscriberErrors).toEqual([]);
    } finally {
      await subscription?.close().catch(() => undefined);
      await relay.stop();
      await publisher.close();
      await inbox.idle();
      await store.close();
      await pubsub
        .subscription(subscriptionName)
        .delete()
        .catch(() => undefined);
      await pubsub
        .topic(topic)
        .delete()
        .catch(() => undefined);
      await consumerClient.close().catch(() => undefined);
      await pubsub.close().catch(() => undefined);
      await pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => undefined);
      await pool.end();
    }
  }, 180_000);
});
