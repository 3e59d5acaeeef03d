// Types for the names a docs sample uses without declaring them (it continues an earlier sample, or stands
// for "your" object). check-snippets.mjs prepends a declaration only for the names a sample is missing, so
// a sample that declares the name itself is compiled against its own declaration.
// Keys: "*" for every source, else the source file relative to the repo root.

const core = (name) => `import("@outbox/core").${name}`;
const memory = (name) => `import("@outbox/memory").${name}`;

/** @type {Record<string, Record<string, string>>} */
export const preludes = {
  "*": {
    // connection settings a sample reads from "your configuration"
    DATABASE_URL: "declare const DATABASE_URL: string;",
    KAFKA_BROKERS: "declare const KAFKA_BROKERS: string;",
    AMQP_URL: "declare const AMQP_URL: string;",
    REDIS_URL: "declare const REDIS_URL: string;",
    // "your" business object, store and publisher
    order: "declare const order: { id: string; customerId: string; total: number };",
    payload: "declare const payload: string;",
    store: `declare const store: ${memory("MemoryStore")};`,
    publisher: `declare const publisher: ${core("OutboxPublisher")};`,
  },
  "docs/getting-started.md": {
    pool: 'declare const pool: import("pg").Pool;',
    store: 'declare const store: import("@outbox/store-postgres").PostgresStore;',
    amount: "declare const amount: number;",
    accountId: "declare const accountId: string;",
    event: "declare const event: { id: string; amount: number };",
  },
  "docs/inbox.md": {
    pool: 'declare const pool: import("pg").Pool;',
    kafka: 'declare const kafka: import("kafkajs").Kafka;',
    message: 'declare const message: import("@outbox/inbox").InboxMessage;',
    orderId: "declare const orderId: string;",
    inbox: 'declare const inbox: import("@outbox/inbox").Inbox<import("@outbox/store-postgres").Queryable>;',
    createInbox: 'import { createInbox } from "@outbox/inbox";',
    createPostgresInboxStore: 'import { createPostgresInboxStore } from "@outbox/store-postgres";',
    createPostgresStore: 'import { createPostgresStore } from "@outbox/store-postgres";',
    MYSQL_URL: "declare const MYSQL_URL: string;",
    MONGODB_URL: "declare const MONGODB_URL: string;",
    transactions: "declare const transactions: boolean;",
  },
  "packages/inbox/README.md": {
    pool: 'declare const pool: import("pg").Pool;',
    message: 'declare const message: import("@outbox/inbox").InboxMessage;',
    orderId: "declare const orderId: string;",
    outboxStore: 'declare const outboxStore: import("@outbox/store-postgres").PostgresStore;',
  },
  "packages/publisher-redis/README.md": {
    redis: 'declare const redis: import("ioredis").Redis;',
    inbox: 'declare const inbox: import("@outbox/inbox").Inbox<import("@outbox/store-postgres").Queryable>;',
  },
  "packages/publisher-rabbitmq/README.md": {
    channel: 'declare const channel: import("amqplib").Channel;',
    inbox: 'declare const inbox: import("@outbox/inbox").Inbox<import("@outbox/store-postgres").Queryable>;',
  },
  "docs/operations.md": {
    relay: `declare const relay: ${core("OutboxRelay")};`,
  },
  "packages/conformance/README.md": {
    createMyStore: `declare function createMyStore(options: { clock: ${core("Clock")} }): ${memory("MemoryStore")};`,
    myDb: `declare const myDb: { transaction<T>(work: (tx: ${memory("MemoryTransaction")}) => Promise<T>): Promise<T> };`,
  },
  "packages/store-mongodb/README.md": {
    createMongoStore: 'import { createMongoStore } from "@outbox/store-mongodb";',
    client: 'declare const client: import("mongodb").MongoClient;',
  },
};

/** Blocks not compiled, by "file › heading", with the reason (where the code is tested instead). */
/** @type {Record<string, string>} */
export const skips = {
  "packages/store-postgres/README.md › Query builders (each recipe is a test in `test/recipes/`)":
    "one block, four libraries (db is Kysely, then Drizzle); each recipe runs in packages/store-postgres/test/recipes",
  "packages/store-mysql/README.md › Query builders and ORMs (each recipe is a test in `test/recipes/`)":
    "one block, six libraries (db is Kysely, then Drizzle); each recipe runs in packages/store-mysql/test/recipes",
};

/**
 * Blocks known not to compile today, by "file › heading", with what is wrong. They are compiled and their
 * errors printed as warnings; once such a block compiles (or its heading is gone) a warning says to remove
 * the entry.
 * @type {Record<string, string>}
 */
export const known = {};
