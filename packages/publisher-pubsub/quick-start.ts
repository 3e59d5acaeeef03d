// Google Cloud Pub/Sub publisher, PostgreSQL store: an order and its event commit together, the relay delivers the
// event to Pub/Sub (here: the emulator, on loopback).
import { randomUUID } from "node:crypto";
import { PubSub } from "@google-cloud/pubsub";
import { jsonPayload, OutboxRelay } from "@outbox/core";
import { createPubSubPublisher } from "@outbox/publisher-pubsub";
import { createPostgresStore, migrate } from "@outbox/store-postgres";
import pg from "pg";

const DATABASE_URL = process.env.DATABASE_URL ?? "postgres://postgres:postgres@127.0.0.1:5432/outbox_test";
const PUBSUB_EMULATOR_HOST = process.env.PUBSUB_EMULATOR_HOST ?? "127.0.0.1:8085";
const PUBSUB_PROJECT_ID = process.env.PUBSUB_PROJECT_ID ?? "outbox-quickstart";

const pool = new pg.Pool({ connectionString: DATABASE_URL });
await migrate(pool); // creates the outbox table; idempotent: run it at startup or from your migrations
await pool.query("CREATE TABLE IF NOT EXISTS orders (id uuid PRIMARY KEY, customer_id text NOT NULL, total numeric)");
const store = createPostgresStore({ pool });

// The emulator: its address, plain text, and no Google credentials. universeDomain is given so that the client
// never asks Google's metadata server for one. In production: new PubSub({ projectId }) with your credentials.
const pubsub = new PubSub({
  projectId: PUBSUB_PROJECT_ID,
  apiEndpoint: PUBSUB_EMULATOR_HOST,
  emulatorMode: true,
  universeDomain: "googleapis.com",
});

// Development only: the topic, and a subscription with ordering on (subscribers see per-key order only there),
// unless they exist. Production topics and subscriptions belong to your infrastructure code.
const topic = pubsub.topic("orders.created");
await topic.create().catch(alreadyExists);
await topic.createSubscription("orders.created.billing", { enableMessageOrdering: true }).catch(alreadyExists);

// The entry key is the ordering key.
const publisher = createPubSubPublisher({ pubsub });
const relay = new OutboxRelay({ store, publisher });
relay.on("error", ({ error, phase }) => console.warn(`outbox relay (${phase}):`, error));
relay.start();

// In a request handler: the order and its event commit, or roll back, together.
const order = { id: randomUUID(), customerId: "customer-7", total: 99.5 };
const delivered = published(relay, order.id);
const client = await pool.connect();
try {
  await client.query("BEGIN");
  await client.query("INSERT INTO orders (id, customer_id, total) VALUES ($1, $2, $3)", [
    order.id,
    order.customerId,
    order.total,
  ]);
  await store.enqueue(client, {
    topic: "orders.created",
    key: order.customerId, // entries of one key are published in enqueue order
    payload: jsonPayload(order),
    idempotencyKey: order.id, // what consumers dedupe on
  });
  await client.query("COMMIT");
} catch (error) {
  await client.query("ROLLBACK");
  throw error;
} finally {
  client.release();
}

await delivered; // Pub/Sub accepted the message and the store marked the entry published
console.log(`order ${order.id} published to Pub/Sub topic orders.created`);

// Shutdown (on SIGTERM in a service): the relay first, then what it uses.
await relay.stop();
await publisher.close();
await pubsub.close();
await store.close();
await pool.end();

/** Creating what exists already fails with ALREADY_EXISTS (gRPC code 6): fine here. */
function alreadyExists(error: { code?: number }): void {
  if (error.code !== 6) throw error;
}

/** Resolves once the relay has published the entry with this idempotency key. */
function published(relay: OutboxRelay, idempotencyKey: string, timeoutMs = 15_000): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`not published within ${timeoutMs} ms`)), timeoutMs);
    const off = relay.on("published", ({ entries }) => {
      if (!entries.some((entry) => entry.idempotencyKey === idempotencyKey)) return;
      clearTimeout(timer);
      off();
      resolve();
    });
  });
}
