// MongoDB store, Kafka publisher: an order and its event are written together, the relay delivers the event.
import { randomUUID } from "node:crypto";
import { jsonPayload, OutboxRelay } from "@outbox/core";
import { createKafkaPublisher, ensureTopics } from "@outbox/publisher-kafka";
import { createMongoStore } from "@outbox/store-mongodb";
import { Kafka } from "kafkajs";
import { MongoClient } from "mongodb";

const MONGODB_URL = process.env.MONGODB_URL ?? "mongodb://127.0.0.1:27017/shop"; // the path names the database
const KAFKA_BROKERS = process.env.KAFKA_BROKERS ?? "127.0.0.1:9092";

const client = new MongoClient(MONGODB_URL);
const db = client.db();
// Multi-document transactions need a replica set or a sharded cluster. A standalone server (and FerretDB 1.x) has
// none: there the store runs with transactions: false, and the order and its entry are two writes (the README's
// "Without transactions" says what that does and does not guarantee).
const hello = await client.db("admin").command({ hello: 1 });
const transactions = typeof hello.setName === "string" || hello.msg === "isdbgrid";
const store = createMongoStore({ client, db: db.databaseName, collection: "outbox", transactions });
await store.init(); // indexes and the server's capabilities; idempotent, before relay.start()

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
const orders = db.collection<{ _id: string; customerId: string; total: number }>("orders");
const session = client.startSession();
try {
  const write = async () => {
    await orders.insertOne({ _id: order.id, customerId: order.customerId, total: order.total }, { session });
    await store.enqueue(session, {
      topic: "orders.created",
      key: order.customerId, // entries of one key are published in enqueue order
      payload: jsonPayload(order),
      idempotencyKey: order.id, // what consumers dedupe on
    });
  };
  if (transactions) await session.withTransaction(write);
  else await write(); // no transactions on this server: the order first, then its entry
} finally {
  await session.endSession();
}

await delivered; // Kafka acknowledged the record and the store marked the entry published
console.log(`order ${order.id} published to Kafka topic orders.created`);

// Shutdown (on SIGTERM in a service): the relay first, then what it uses.
await relay.stop();
await publisher.close();
await store.close();
await client.close();

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
