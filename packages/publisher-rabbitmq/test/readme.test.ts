// The README's quick start, run as written (names made unique per run).
import { jsonPayload, OutboxRelay } from "@outbox/core";
import { createPostgresStore, migrate } from "@outbox/store-postgres";
import amqplib from "amqplib";
import pg from "pg";
import { expect, it } from "vitest";
import { createRabbitMqPublisher } from "../src/index.js";
import { deleteQueue, QueueReader } from "./support/rabbit.js";

it("README quick start", async () => {
  const suffix = globalThis.crypto.randomUUID().slice(0, 8);
  const table = `outbox_readme_${suffix}`;
  const queueName = `orders.created.${suffix}`;
  const DATABASE_URL = process.env.OUTBOX_PG_URL ?? "postgres://postgres:postgres@127.0.0.1:5432/outbox_test";
  const AMQP_URL = process.env.OUTBOX_AMQP_URL ?? "amqp://guest:guest@127.0.0.1:5672";
  const order = { id: 42, customerId: "customer-7", total: 99.5 };

  // --- quick start ---------------------------------------------------------------------------
  const pool = new pg.Pool({ connectionString: DATABASE_URL });
  await migrate(pool, { table });
  const store = createPostgresStore({ pool, table });

  // Development only: declare the exchange and a queue (production topology belongs to your
  // infrastructure code).
  const setup = await amqplib.connect(AMQP_URL);
  const channel = await setup.createChannel();
  await channel.assertExchange("orders", "topic", { durable: true });
  await channel.assertQueue(queueName, { durable: true, arguments: { "x-queue-type": "quorum" } });
  await channel.bindQueue(queueName, "orders", "orders.created");
  await channel.close();
  await setup.close();

  const publisher = createRabbitMqPublisher({ url: AMQP_URL, exchange: "orders" });
  const relay = new OutboxRelay({ store, publisher });
  relay.start();

  // In a request handler: the event commits or rolls back with your own writes.
  const client = await pool.connect();
  try {
    await client.query("BEGIN");
    // ... INSERT INTO orders ...
    await store.enqueue(client, { topic: "orders.created", key: order.customerId, payload: jsonPayload(order) });
    await client.query("COMMIT");
  } catch (error) {
    await client.query("ROLLBACK");
    throw error;
  } finally {
    client.release();
  }
  // --- end of quick start (shutdown below) -----------------------------------------------------

  const [message] = await new QueueReader().receive(queueName, 1, 30_000);
  expect(message?.key).toBe("customer-7");
  expect(JSON.parse(new TextDecoder().decode(message?.payload))).toEqual(order);

  await relay.stop();
  await publisher.close();
  await store.close();
  await pool.query(`DROP TABLE IF EXISTS "${table}", "${table}_fence"`);
  await pool.end();
  await deleteQueue(queueName);
});
