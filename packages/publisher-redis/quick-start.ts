// Redis Streams publisher, PostgreSQL store: an order and its event commit together, the relay appends the event
// to a Redis stream (one pipelined XADD round trip per batch).
import { randomUUID } from "node:crypto";
import { jsonPayload, OutboxRelay } from "@outbox/core";
import { createRedisStreamPublisher, decodeStreamFields } from "@outbox/publisher-redis";
import { createPostgresStore, migrate } from "@outbox/store-postgres";
import { Redis } from "ioredis";
import pg from "pg";

const DATABASE_URL = process.env.DATABASE_URL ?? "postgres://postgres:postgres@127.0.0.1:5432/outbox_test";
const REDIS_URL = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";

const pool = new pg.Pool({ connectionString: DATABASE_URL });
await migrate(pool); // creates the outbox table; idempotent: run it at startup or from your migrations
await pool.query("CREATE TABLE IF NOT EXISTS orders (id uuid PRIMARY KEY, customer_id text NOT NULL, total numeric)");
const store = createPostgresStore({ pool });

const redis = new Redis(REDIS_URL);
const publisher = createRedisStreamPublisher({
  client: redis, // yours: the publisher never closes it
  stream: (entry) => entry.topic, // the default: one stream per topic
  maxLen: 100_000, // optional: XADD ... MAXLEN ~ 100000
});
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

await delivered; // the XADD succeeded and the store marked the entry published
console.log(`order ${order.id} published to Redis stream orders.created`);

// A consumer: the *Buffer variants return binary payloads byte for byte.
const [last] = await redis.xrevrangeBuffer("orders.created", "+", "-", "COUNT", 1);
if (last) {
  const [streamId, fields] = last;
  const message = decodeStreamFields(fields); // { id, topic, key, idempotencyKey, headers, payload }
  console.log(`stream entry ${streamId}: idempotency key ${message.idempotencyKey}, key ${message.key}`);
}

// Shutdown (on SIGTERM in a service): the relay first, then what it uses.
await relay.stop();
await publisher.close();
await store.close();
await pool.end();
await redis.quit();

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
