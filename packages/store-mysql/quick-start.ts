// MySQL / MariaDB store, RabbitMQ publisher: an order and its event commit together, the relay delivers the event.
import { randomUUID } from "node:crypto";
import { jsonPayload, OutboxRelay } from "@outbox/core";
import { createRabbitMqPublisher } from "@outbox/publisher-rabbitmq";
import { createMySqlStore, migrate } from "@outbox/store-mysql";
import amqplib from "amqplib";
import mysql from "mysql2/promise";

const DATABASE_URL = process.env.DATABASE_URL ?? "mysql://outbox:outbox@127.0.0.1:3306/outbox_test";
const AMQP_URL = process.env.AMQP_URL ?? "amqp://guest:guest@127.0.0.1:5672";

const pool = mysql.createPool({ uri: DATABASE_URL, connectionLimit: 10 });
await migrate(pool); // creates the outbox tables; idempotent: run it at startup or from your migrations
await pool.query(
  "CREATE TABLE IF NOT EXISTS orders (id CHAR(36) PRIMARY KEY, customer_id VARCHAR(64) NOT NULL, total DECIMAL(12, 2))",
);
const store = createMySqlStore({ pool });

// Development only: declare the exchange and a queue bound to it (production topology belongs to your
// infrastructure code). Declaring what exists already is a no-op.
const setup = await amqplib.connect(AMQP_URL);
const channel = await setup.createChannel();
await channel.assertExchange("orders", "topic", { durable: true });
await channel.assertQueue("orders.created", { durable: true, arguments: { "x-queue-type": "quorum" } });
await channel.bindQueue("orders.created", "orders", "orders.created");
await setup.close();

const publisher = createRabbitMqPublisher({ url: AMQP_URL, exchange: "orders" });
const relay = new OutboxRelay({ store, publisher });
relay.on("error", ({ error, phase }) => console.warn(`outbox relay (${phase}):`, error));
relay.start();

// In a request handler: the order and its event commit, or roll back, together. store.transaction() runs
// START TRANSACTION ... COMMIT on one pooled connection (retrying deadlocks) and wakes this process's relay after
// COMMIT; with your own connection, call store.notifyCommitted() after COMMIT instead.
const order = { id: randomUUID(), customerId: "customer-7", total: 99.5 };
const delivered = published(relay, order.id);
await store.transaction(async (tx) => {
  await tx.query("INSERT INTO orders (id, customer_id, total) VALUES (?, ?, ?)", [
    order.id,
    order.customerId,
    order.total,
  ]);
  await store.enqueue(tx, {
    topic: "orders.created",
    key: order.customerId, // entries of one key are published in enqueue order
    payload: jsonPayload(order),
    idempotencyKey: order.id, // what consumers dedupe on
  });
});

await delivered; // RabbitMQ confirmed the message and the store marked the entry published
console.log(`order ${order.id} published to RabbitMQ exchange orders (queue orders.created)`);

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
