// Leader election on Redis: several relay processes may run this, one of them (the lock holder) drains the outbox,
// and the store refuses an older holder's fencing token. PostgreSQL store, Redis Streams publisher.
import { randomUUID } from "node:crypto";
import { jsonPayload, OutboxRelay } from "@outbox/core";
import { createRedisLockBackend } from "@outbox/lock-redis";
import { createRedisStreamPublisher } from "@outbox/publisher-redis";
import { createPostgresStore, migrate } from "@outbox/store-postgres";
import { Redis } from "ioredis";
import pg from "pg";

const DATABASE_URL = process.env.DATABASE_URL ?? "postgres://postgres:postgres@127.0.0.1:5432/outbox_test";
const REDIS_URL = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";

const pool = new pg.Pool({ connectionString: DATABASE_URL });
await migrate(pool); // creates the outbox table; idempotent: run it at startup or from your migrations
await pool.query("CREATE TABLE IF NOT EXISTS orders (id uuid PRIMARY KEY, customer_id text NOT NULL, total numeric)");
const store = createPostgresStore({ pool });

// The lock's client fails fast, so that an unreachable Redis counts as "not held" at once.
const lockRedis = new Redis(REDIS_URL, {
  maxRetriesPerRequest: 1, // fail a command after one reconnect attempt instead of 20
  enableOfflineQueue: false, // no queueing while disconnected
  commandTimeout: 1_000, // a silent connection (partition) fails the command too
  lazyConnect: true,
});
await lockRedis.connect(); // without the offline queue, commands sent before "ready" would fail
const redis = new Redis(REDIS_URL); // the publisher's
const publisher = createRedisStreamPublisher({ client: redis });

const relay = new OutboxRelay({
  store, // checks the fencing token in the database
  publisher,
  leader: {
    backend: createRedisLockBackend({ client: lockRedis }),
    name: "orders-outbox", // lock name and fence name: the same in every relay process
    ttlMs: 10_000, // renewed every ttl/3; held locally until ttl - ttl/5 after the last renewal was sent
  },
});
relay.on("leadershipGained", ({ grant }) => console.log("leading with fencing token", grant.token));
relay.on("leadershipLost", ({ reason }) => console.warn("stopped leading", reason));
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

await delivered; // the leader published it to the stream orders.created
console.log(`order ${order.id} published to Redis stream orders.created`);

// Shutdown (on SIGTERM in a service): stops claiming, finishes the batch in flight, releases the lock.
await relay.stop();
await publisher.close();
await store.close();
await pool.end();
await lockRedis.quit(); // the clients are yours: the backend and the publisher never close them
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
