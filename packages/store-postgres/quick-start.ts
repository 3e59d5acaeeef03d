// PostgreSQL store, Kafka publisher: an order and its event commit together, the relay delivers the event.
import { randomUUID } from "node:crypto";
import { jsonPayload, OutboxRelay } from "@outbox/core";
import { createKafkaPublisher, ensureTopics } from "@outbox/publisher-kafka";
import { createPostgresStore, migrate } from "@outbox/store-postgres";
import { Kafka } from "kafkajs";
import pg from "pg";

const DATABASE_URL = process.env.DATABASE_URL ?? "postgres://postgres:postgres@127.0.0.1:5432/outbox_test";
const KAFKA_BROKERS = process.env.KAFKA_BROKERS ?? "127.0.0.1:9092";

const pool = new pg.Pool({ connectionString: DATABASE_URL });
await migrate(pool); // creates the outbox table; idempotent: run it at startup or from your migrations
await pool.query("CREATE TABLE IF NOT EXISTS orders (id uuid PRIMARY KEY, customer_id text NOT NULL, total numeric)");
const store = createPostgresStore({ pool });

// Development only: create the topic (production topics belong to your infrastructure code).
const kafka = new Kafka({ clientId: "orders-service", brokers: KAFKA_BROKERS.split(",") });
const admin = kafka.admin();
await admin.connect();
await ensureTopics(admin, ["orders.created"], { partitions: 3 });
await admin.disconnect();

const publisher = createKafkaPublisher({ kafka });
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

await delivered; // the relay claimed the committed entry, Kafka acknowledged it, the store marked it published
console.log(`order ${order.id} published to Kafka topic orders.created`);

// Shutdown (on SIGTERM in a service): the relay first, then what it uses.
await relay.stop();
await publisher.close();
await store.close();
await pool.end();

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
