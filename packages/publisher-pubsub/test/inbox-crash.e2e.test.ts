// End to end with real crashes (@outbox/test-support/inbox-crash): PostgreSQL outbox -> relay process -> Pub/Sub
// (Google's pstest fake; a subscription with message ordering on) -> consumer process (streaming subscriber,
// inboxMessageHandler) -> PostgreSQL inbox. The relay is SIGKILLed between the server's reply and the store's ack,
// the consumer inside a handler with messages in hand (they come back to the next one after the ack deadline),
// and the server is restarted (scripts/services.sh) while both run, the second half of the entries committed while
// it is down.
//
// The fake keeps nothing across a restart (topics, subscriptions, messages): the restart comes once everything
// published before it was handled (what the server held then would be lost for good), and the test makes the topic
// and the subscription again, as the real service would have kept them. Until then the relay reaches the server
// through a proxy that refuses it: the fake's NOT_FOUND for the topic would be a permanent failure (dead letters).
import type { PubSub } from "@google-cloud/pubsub";
import { createPostgresStore, migrate, migrateInbox } from "@outbox/store-postgres";
import { describeCrashRun, runInboxCrash } from "@outbox/test-support/inbox-crash";
import { createEffects } from "@outbox/test-support/inbox-effects";
import { freshIdentifier, pgUrl } from "@outbox/test-support/postgres";
import { services } from "@outbox/test-support/services";
import { TcpProxy } from "@outbox/test-support/tcp-proxy";
import { waitFor } from "@outbox/test-support/wait";
import pg from "pg";
import { describe, expect, it } from "vitest";
import { emulatorHost, newPubSub, projectId, uniqueTopic } from "./support/pubsub.js";

const ENTRIES = 600;
const KEYS = 12;
/** Off only while working on the other faults: a restart disturbs everyone's tests on this server. */
const RESTART = true;

async function createTopicAndSubscription(pubsub: PubSub, topic: string): Promise<void> {
  await pubsub.createTopic(topic);
  await pubsub.createSubscription(topic, `${topic}-sub`, { enableMessageOrdering: true });
}

describe("e2e: outbox -> Pub/Sub -> inbox, through real crashes", () => {
  it(`applies each of ${ENTRIES} entries' effect exactly once, in key order, through a relay kill, a consumer kill inside a handler and a server restart`, async () => {
    const schema = freshIdentifier("inbox_pubsub_crash");
    const pool = new pg.Pool({ connectionString: pgUrl, max: 4 });
    pool.on("error", () => undefined);
    const store = createPostgresStore({ pool, schema, listen: false, notifyChannel: false });
    const topic = uniqueTopic("inbox-crash");
    const proxy = await TcpProxy.start(emulatorHost);
    let admin = newPubSub();
    const restartServer = async (whileDown: () => Promise<void>) => {
      proxy.cut();
      await admin.close();
      await services("stop", "pubsub");
      try {
        await whileDown();
      } finally {
        await services("start", "pubsub");
        admin = newPubSub();
        await waitFor(() => createTopicAndSubscription(admin, topic).then(() => true), 30_000, "the topic again");
        proxy.restore();
      }
    };
    try {
      await migrate(pool, { schema });
      await migrateInbox(pool, { schema });
      await createEffects(pool, schema);
      // Before anything is published: Pub/Sub delivers only what was published after the subscription exists.
      await createTopicAndSubscription(admin, topic);

      const run = await runInboxCrash({
        pool,
        schema,
        store,
        topic,
        entries: ENTRIES,
        keys: KEYS,
        relayChild: new URL("./fixtures/inbox-relay-child.ts", import.meta.url),
        consumerChild: new URL("./fixtures/inbox-consumer-child.ts", import.meta.url),
        env: {
          E2E_PUBSUB_PROJECT: projectId,
          E2E_PUBSUB_RELAY_ENDPOINT: proxy.endpoint,
          E2E_PUBSUB_CONSUMER_ENDPOINT: emulatorHost,
        },
        restartBroker: RESTART ? restartServer : null,
        forgetsOnRestart: true,
      });
      console.info(describeCrashRun(run));

      expect(run.missing, "every entry's effect row exists").toEqual([]);
      expect(run.doubled, "no entry's effect row exists twice").toEqual([]);
      expect(run.outOfOrder, "each key's effects applied in enqueue order").toEqual([]);
      expect(run.inboxRows, "one inbox key per entry").toBe(ENTRIES);
      expect(run.store.dead).toBe(0);
      expect(run.relayHalted, "relay 1 died with published, unacknowledged entries").toBeGreaterThan(0);
      expect(run.duplicates, "which came again, as duplicates").toBeGreaterThanOrEqual(run.relayHalted);
      expect(run.consumerHaltedIn, "consumer 1 died inside a handler").toMatch(/^entry-\d+$/);
      expect(run.haltedHandledLater, "its rolled-back message came back to the next consumer").toBe(true);
      if (RESTART) {
        expect(run.restartMs, "the server was restarted").not.toBeNull();
        expect(run.handledAfterRestart, "consumer 2 lived through it: it handled what came after").toBeGreaterThan(0);
      }
    } finally {
      await store.close();
      await admin
        .subscription(`${topic}-sub`)
        .delete()
        .catch(() => undefined);
      await admin
        .topic(topic)
        .delete()
        .catch(() => undefined);
      await admin.close().catch(() => undefined);
      await proxy.close();
      await pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => undefined);
      await pool.end();
    }
  }, 240_000);
});
