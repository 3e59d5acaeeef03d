// The README's quick start, run as written (names made unique per run).
import { jsonPayload, OutboxRelay } from "@outbox/core";
import { createPostgresStore, migrate } from "@outbox/store-postgres";
import { Kafka, logLevel } from "kafkajs";
import pg from "pg";
import { expect, it } from "vitest";
import { createKafkaPublisher, ensureTopics } from "../src/index.js";
import { receive } from "./support/kafka.js";

it("README quick start", async () => {
  const suffix = globalThis.crypto.randomUUID().slice(0, 8);
  const table = `outbox_readme_${suffix}`;
  const topicName = `orders.created.${suffix}`;
  const DATABASE_URL = process.env.OUTBOX_PG_URL ?? "postgres://postgres:postgres@127.0.0.1:5432/outbox_test";
  const KAFKA_BROKERS = process.env.OUTBOX_KAFKA_BROKERS ?? "127.0.0.1:9092";
  const order = { id: 42, customerId: "customer-7", total: 99.5 };

  // --- quick start ---------------------------------------------------------------------------
  const pool = new pg.Pool({ connectionString: DATABASE_URL });
  await migrate(pool, { table });
  const store = createPostgresStore({ pool, table });
  const kafka = new Kafka({ clientId: "orders-service", brokers: KAFKA_BROKERS.split(","), logLevel: logLevel.WARN });

  // Development only: create the topic (production topics belong to your infrastructure code).
  const admin = kafka.admin();
  await admin.connect();
  await ensureTopics(admin, [topicName], { partitions: 3 });
  await admin.disconnect();

  const publisher = createKafkaPublisher({ kafka });
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

  const [message] = await receive(kafka, topicName, 1, 30_000);
  expect(message?.key).toBe("customer-7");
  expect(JSON.parse(new TextDecoder().decode(message?.payload))).toEqual(order);

  await relay.stop();
  await publisher.close();
  await store.close();
  await pool.query(`DROP TABLE IF EXISTS "${table}", "${table}_fence"`);
  await pool.end();
});
