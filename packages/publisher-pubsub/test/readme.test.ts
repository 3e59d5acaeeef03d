// The README's quick start, run as written (names made unique per run).
import { PubSub, v1 } from "@google-cloud/pubsub";
import { jsonPayload, OutboxRelay } from "@outbox/core";
import { createPostgresStore, migrate } from "@outbox/store-postgres";
import pg from "pg";
import { expect, it } from "vitest";
import { createPubSubPublisher } from "../src/index.js";
import { emulatorHost } from "./support/pubsub.js";

it("README quick start", async () => {
  const suffix = globalThis.crypto.randomUUID().slice(0, 8);
  const table = `outbox_readme_${suffix}`;
  const topicName = `orders.created.${suffix}`;
  const DATABASE_URL = process.env.OUTBOX_PG_URL ?? "postgres://postgres:postgres@127.0.0.1:5432/outbox_test";
  process.env.PUBSUB_EMULATOR_HOST = emulatorHost;
  const order = { id: 42, customerId: "customer-7", total: 99.5 };

  // --- quick start ---------------------------------------------------------------------------
  const pool = new pg.Pool({ connectionString: DATABASE_URL });
  await migrate(pool, { table });
  const store = createPostgresStore({ pool, table });
  // Honours PUBSUB_EMULATOR_HOST (the emulator / fake server in development).
  const pubsub = new PubSub({ projectId: "outbox-test" });

  // Development only: create the topic, and a subscription with ordering on (production
  // topics and subscriptions belong to your infrastructure code).
  const [topic] = await pubsub.createTopic(topicName);
  await topic.createSubscription(`${topicName}.billing`, { enableMessageOrdering: true });

  const publisher = createPubSubPublisher({ pubsub });
  const relay = new OutboxRelay({ store, publisher });
  relay.start();

  // In a request handler: the event commits or rolls back with your own writes.
  const client = await pool.connect();
  try {
    await client.query("BEGIN");
    // ... INSERT INTO orders ...
    await store.enqueue(client, { topic: topicName, key: order.customerId, payload: jsonPayload(order) });
    await client.query("COMMIT");
  } catch (error) {
    await client.query("ROLLBACK");
    throw error;
  } finally {
    client.release();
  }
  // --- end of quick start (shutdown below) -----------------------------------------------------

  // Read back through the subscription the quick start created.
  const subscriber = new v1.SubscriberClient({ ...pubsub.options } as ConstructorParameters<
    typeof v1.SubscriberClient
  >[0]);
  const subscription = `projects/outbox-test/subscriptions/${topicName}.billing`;
  let message: { orderingKey?: string | null; data?: Uint8Array | string | null } | null | undefined;
  for (let attempt = 0; attempt < 60 && !message; attempt++) {
    const [response] = await subscriber.pull({ subscription, maxMessages: 10 });
    message = response.receivedMessages?.[0]?.message;
  }
  expect(message?.orderingKey).toBe("customer-7");
  expect(JSON.parse(Buffer.from(message?.data as Uint8Array).toString("utf8"))).toEqual(order);

  // --- shutdown ---
  await relay.stop();
  await publisher.close();
  await pubsub.close();
  // ---
  await subscriber.close();
  await store.close();
  await pool.query(`DROP TABLE IF EXISTS "${table}", "${table}_fence"`);
  await pool.end();
});
