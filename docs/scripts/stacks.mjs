// The stack picker's parts: one store, one publisher, optionally one lock backend. generate.mjs
// composes every combination into a whole program (docs/.generated/stacks/*.ts, type-checked by
// check-snippets.mjs) and into docs/stack-picker.md.

/** @typedef {{ id: string, label: string, packages: string[], imports: string[], setup: string, shutdown: string[], note?: string }} Part */

/** @type {(Part & { enqueue: string })[]} */
export const stores = [
  {
    id: "postgres",
    label: "PostgreSQL (pg)",
    packages: ["@outbox/store-postgres", "pg"],
    imports: ['import { createPostgresStore, migrate } from "@outbox/store-postgres";', 'import pg from "pg";'],
    setup: `const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL });
await migrate(pool); // idempotent: at startup or from your migrations
const store = createPostgresStore({ pool });`,
    enqueue: `export async function placeOrder(order: Order): Promise<void> {
  const client = await pool.connect();
  try {
    await client.query("BEGIN");
    await client.query("INSERT INTO orders (id, customer_id, total) VALUES ($1, $2, $3)", [
      order.id,
      order.customerId,
      order.total,
    ]);
    await store.enqueue(client, { topic: "orders.created", key: order.customerId, payload: jsonPayload(order) });
    await client.query("COMMIT");
  } catch (error) {
    await client.query("ROLLBACK");
    throw error;
  } finally {
    client.release();
  }
}`,
    shutdown: ["await store.close();", "await pool.end();"],
  },
  {
    id: "mysql",
    label: "MySQL / MariaDB (mysql2)",
    packages: ["@outbox/store-mysql", "mysql2"],
    imports: [
      'import { createMySqlStore, migrate } from "@outbox/store-mysql";',
      'import mysql from "mysql2/promise";',
    ],
    setup: `const pool = mysql.createPool({ uri: process.env.DATABASE_URL ?? "mysql://root@127.0.0.1:3306/shop" });
await migrate(pool); // idempotent: at startup or from your migrations
const store = createMySqlStore({ pool });`,
    enqueue: `export async function placeOrder(order: Order): Promise<void> {
  // store.transaction runs START TRANSACTION / COMMIT and wakes this process's relay after the commit.
  await store.transaction(async (tx) => {
    await tx.query("INSERT INTO orders (id, customer_id, total) VALUES (?, ?, ?)", [
      order.id,
      order.customerId,
      order.total,
    ]);
    await store.enqueue(tx, { topic: "orders.created", key: order.customerId, payload: jsonPayload(order) });
  });
}`,
    shutdown: ["await store.close();", "await pool.end();"],
  },
  {
    id: "mongodb",
    label: "MongoDB (mongodb)",
    packages: ["@outbox/store-mongodb", "mongodb"],
    imports: ['import { createMongoStore } from "@outbox/store-mongodb";', 'import { MongoClient } from "mongodb";'],
    setup: `// Transactions need a replica set (a single-node one is fine).
const mongo = new MongoClient(process.env.MONGODB_URL ?? "mongodb://127.0.0.1:27017/?replicaSet=rs0");
await mongo.connect();
const store = createMongoStore({ client: mongo, db: "shop" });
await store.init(); // indexes, and reads whether the server has change streams`,
    enqueue: `export async function placeOrder(order: Order): Promise<void> {
  const session = mongo.startSession();
  try {
    await session.withTransaction(async () => {
      await mongo.db("shop").collection("orders").insertOne({ ...order }, { session });
      await store.enqueue(session, { topic: "orders.created", key: order.customerId, payload: jsonPayload(order) });
    });
  } finally {
    await session.endSession();
  }
}`,
    shutdown: ["await store.close();", "await mongo.close();"],
  },
];

/** @type {Part[]} */
export const publishers = [
  {
    id: "kafka",
    label: "Kafka (kafkajs)",
    packages: ["@outbox/publisher-kafka", "kafkajs"],
    imports: ['import { createKafkaPublisher } from "@outbox/publisher-kafka";', 'import { Kafka } from "kafkajs";'],
    setup: `const kafka = new Kafka({ clientId: "orders-service", brokers: (process.env.KAFKA_BROKERS ?? "127.0.0.1:9092").split(",") });
const publisher = createKafkaPublisher({ kafka }); // idempotent producer, acks from all in-sync replicas`,
    shutdown: ["await publisher.close();"],
  },
  {
    id: "redis",
    label: "Redis Streams (ioredis)",
    packages: ["@outbox/publisher-redis", "ioredis"],
    imports: [
      'import { createRedisStreamPublisher } from "@outbox/publisher-redis";',
      'import { Redis } from "ioredis";',
    ],
    setup: `const redis = new Redis(process.env.REDIS_URL ?? "redis://127.0.0.1:6379");
const publisher = createRedisStreamPublisher({ client: redis, maxLen: 100_000 }); // one pipelined XADD round trip per batch`,
    shutdown: ["await publisher.close();", "await redis.quit();"],
  },
  {
    id: "rabbitmq",
    label: "RabbitMQ (amqplib)",
    packages: ["@outbox/publisher-rabbitmq", "amqplib"],
    imports: ['import { createRabbitMqPublisher } from "@outbox/publisher-rabbitmq";'],
    setup: `// Publishes to the "orders" exchange with the entry's topic as routing key, on a confirm channel.
const publisher = createRabbitMqPublisher({ url: process.env.AMQP_URL ?? "amqp://127.0.0.1:5672", exchange: "orders" });`,
    shutdown: ["await publisher.close();"],
  },
  {
    id: "pubsub",
    label: "Google Cloud Pub/Sub",
    packages: ["@outbox/publisher-pubsub", "@google-cloud/pubsub"],
    imports: [
      'import { PubSub } from "@google-cloud/pubsub";',
      'import { createPubSubPublisher } from "@outbox/publisher-pubsub";',
    ],
    setup: `const pubsub = new PubSub(); // project and credentials from the environment (PUBSUB_EMULATOR_HOST in development)
const publisher = createPubSubPublisher({ pubsub }); // the entry's key is the ordering key`,
    shutdown: ["await publisher.close();", "await pubsub.close();"],
  },
];

/** @type {(Part & { backend: string })[]} */
export const locks = [
  {
    id: "none",
    label: "none (one relay, or several without a leader)",
    packages: [],
    imports: [],
    setup: "",
    backend: "",
    shutdown: [],
  },
  {
    id: "postgres",
    label: "PostgreSQL advisory lock (pg)",
    packages: ["@outbox/lock-postgres", "pg"],
    imports: ['import { createPostgresLockBackend } from "@outbox/lock-postgres";'],
    setup: `// One dedicated session per backend; its advisory lock is the leadership.
const lockBackend = createPostgresLockBackend({ connectionString: process.env.LOCK_DATABASE_URL ?? process.env.DATABASE_URL });`,
    backend: "lockBackend",
    shutdown: ["await lockBackend.close();"],
  },
  {
    id: "redis",
    label: "Redis (ioredis)",
    packages: ["@outbox/lock-redis", "ioredis"],
    imports: ['import { createRedisLockBackend } from "@outbox/lock-redis";', 'import { Redis } from "ioredis";'],
    setup: `// A client of its own that fails fast: while Redis is unreachable, this replica is not the leader.
const lockRedis = new Redis(process.env.REDIS_URL ?? "redis://127.0.0.1:6379", {
  maxRetriesPerRequest: 1,
  enableOfflineQueue: false,
  commandTimeout: 1_000,
  lazyConnect: true,
});
await lockRedis.connect();
const lockBackend = createRedisLockBackend({ client: lockRedis });`,
    backend: "lockBackend",
    shutdown: ["await lockRedis.quit();"],
  },
  {
    id: "etcd",
    label: "etcd (etcd3)",
    packages: ["@outbox/lock-etcd", "etcd3"],
    imports: ['import { createEtcdLockBackend } from "@outbox/lock-etcd";', 'import { Etcd3 } from "etcd3";'],
    setup: `const etcd = new Etcd3({ hosts: process.env.ETCD_HOSTS ?? "127.0.0.1:2379", dialTimeout: 1_000 });
const lockBackend = createEtcdLockBackend({ client: etcd });`,
    backend: "lockBackend",
    shutdown: ["etcd.close();"],
  },
];

/** Sorts import lines by module name, merges duplicates. */
function sortImports(lines) {
  const unique = [...new Set(lines)];
  const from = (line) => /from "([^"]+)"/.exec(line)?.[1] ?? line;
  return unique.sort((a, b) => from(a).localeCompare(from(b)));
}

/** The whole program for one combination. */
export function composeStack(store, publisher, lock) {
  const imports = sortImports([
    'import { jsonPayload, OutboxRelay } from "@outbox/core";',
    ...store.imports,
    ...publisher.imports,
    ...lock.imports,
  ]);
  const leader = lock.backend
    ? `\n  // One leader at a time; its fencing token travels with every claim and ack.\n  leader: { backend: ${lock.backend}, name: "orders-outbox", ttlMs: 10_000 },`
    : "";
  const shutdown = [...lock.shutdown, ...publisher.shutdown, ...store.shutdown];
  return `${imports.join("\n")}

interface Order {
  id: string;
  customerId: string;
  total: number;
}

// The store: entries live in your database, next to your business rows.
${store.setup}

// The publisher: the broker the relay moves committed entries to.
${publisher.setup}
${lock.setup ? `\n// The lock backend: leader election across relay replicas.\n${lock.setup}\n` : ""}
const relay = new OutboxRelay({
  store,
  publisher,${leader}
});
relay.on("error", ({ error, phase }) => console.error("outbox relay", phase, error));
relay.on("deadLettered", ({ entry, error }) => console.error("dead letter", entry.id, error));
relay.start();

// In a request handler: the event commits or rolls back with your own writes.
${store.enqueue}

// Shutdown: the relay first (it finishes the batches in flight and releases the lock), then what it uses.
process.once("SIGTERM", async () => {
  await relay.stop();
${shutdown.map((line) => `  ${line}`).join("\n")}
});
`;
}

/** The npm install line for one combination. */
export function installLine(store, publisher, lock) {
  const names = [...new Set(["@outbox/core", ...store.packages, ...publisher.packages, ...lock.packages])];
  return `npm install ${names.join(" ")}`;
}
