// PostgreSQL store -> Kafka, leader election on a Redis lock.
import { connect as netConnect } from "node:net";
import { OutboxHeader } from "@outbox/core";
import { createRedisLockBackend } from "@outbox/lock-redis";
import { createKafkaPublisher, ensureTopics } from "@outbox/publisher-kafka";
import { createPostgresStore, migrate } from "@outbox/store-postgres";
import { inTransaction } from "@outbox/test-support/postgres";
import { failFast } from "@outbox/test-support/redis";
import { kafkaBrokers, pgUrl, redisUrl } from "@outbox/test-support/services";
import { Redis } from "ioredis";
import { type IHeaders, Kafka, logLevel } from "kafkajs";
import pg from "pg";
import type { Delivery } from "../check.js";
import { type Recorder, SeqHeader, type Stack, type StackAdmin } from "../stack.js";

const broker = kafkaBrokers[0] as string;

function text(headers: IHeaders | undefined, name: string): string | undefined {
  const value = headers?.[name];
  const single = Array.isArray(value) ? value[value.length - 1] : value;
  return single === undefined ? undefined : single.toString();
}

/** A kafkajs consumer in a fresh group, from the beginning of the topic, each offset recorded once. */
async function kafkaRecorder(topic: string): Promise<Recorder> {
  const kafka = new Kafka({ clientId: "chaos-recorder", brokers: kafkaBrokers, logLevel: logLevel.NOTHING });
  const consumer = kafka.consumer({ groupId: `chaos-recorder-${topic}`, maxWaitTimeInMs: 100 });
  const deliveries: Delivery[] = [];
  const errors: string[] = [];
  const seen = new Set<string>();
  const joined = new Promise<void>((resolve) => consumer.on(consumer.events.GROUP_JOIN, () => resolve()));
  consumer.on(consumer.events.CRASH, ({ payload }) => errors.push(`consumer crash: ${payload.error.message}`));
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  await consumer.run({
    eachMessage: async ({ partition, message }) => {
      const at = Date.now();
      const offset = `${partition}:${message.offset}`;
      if (seen.has(offset)) return; // our own re-read after a rebalance, not a relay's duplicate
      seen.add(offset);
      deliveries.push({
        id: text(message.headers, OutboxHeader.IdempotencyKey) ?? "",
        key: message.key?.toString() ?? "",
        seq: Number(text(message.headers, SeqHeader)),
        at,
      });
    },
  });
  await joined;
  return { deliveries, errors, close: () => consumer.disconnect() };
}

export const stack: Stack = {
  id: "pg-kafka",
  title: "PostgreSQL -> Kafka, Redis lock",
  db: new URL(pgUrl).host,
  broker,
  resetGapMs: 0,
  settings: {
    store: "createPostgresStore({ pool, table }): defaults (LISTEN/NOTIFY wake-ups, prepared statements, sync acks)",
    publisher:
      "createKafkaPublisher({ kafka }): defaults (idempotent, acks -1, timeoutMs 20000); topic of 3 partitions",
    lock: "createRedisLockBackend({ client }): ioredis with the README's fail-fast options",
  },
  dbUrl(endpoint) {
    const url = new URL(pgUrl);
    url.host = endpoint;
    return url.toString();
  },
  async openStore(url, names, hooks) {
    const pool = new pg.Pool({ connectionString: url, application_name: hooks.app });
    pool.on("error", () => undefined); // idle clients killed by a fault; the store reports its own
    const store = createPostgresStore({
      pool,
      table: names.table,
      ...(hooks.onError ? { onError: hooks.onError } : {}),
    });
    return {
      store,
      enqueueCommitted: (messages) => inTransaction(pool, (tx) => store.enqueue(tx, messages)).then(() => undefined),
      async close() {
        await store.close();
        await pool.end();
      },
    };
  },
  async openPublisher(endpoint) {
    // Every broker connection (bootstrap and the addresses the metadata names) goes through the
    // proxy: this one-broker cluster advertises 127.0.0.1:9092 only.
    const [host, port] = [endpoint.slice(0, endpoint.lastIndexOf(":")), Number(endpoint.split(":").pop())];
    const kafka = new Kafka({
      clientId: `chaos-relay-${process.pid}`,
      brokers: [endpoint],
      logLevel: logLevel.NOTHING,
      socketFactory: ({ onConnect }) => {
        const socket = netConnect({ host, port }, onConnect);
        socket.setKeepAlive(true, 60_000);
        return socket;
      },
    });
    return createKafkaPublisher({ kafka });
  },
  async openLock() {
    const client = new Redis(redisUrl, { ...failFast, lazyConnect: true });
    client.on("error", () => undefined);
    await client.connect().catch(() => undefined); // the lock reports "not held" until Redis answers
    return { backend: createRedisLockBackend({ client }), close: async () => client.disconnect() };
  },
  async prepare(names): Promise<StackAdmin> {
    const pool = new pg.Pool({ connectionString: pgUrl, max: 2, application_name: "chaos-admin" });
    pool.on("error", () => undefined);
    await migrate(pool, { table: names.table });
    const kafka = new Kafka({ clientId: "chaos-admin", brokers: kafkaBrokers, logLevel: logLevel.NOTHING });
    const admin = kafka.admin();
    await admin.connect();
    await ensureTopics(admin, [names.topic], { partitions: 3 });
    const recorder = await kafkaRecorder(names.topic);
    const redis = new Redis(redisUrl);
    redis.on("error", () => undefined);
    const lockKey = createRedisLockBackend({ client: redis }).lockKey(names.lock);
    const store = createPostgresStore({ pool, table: names.table, listen: false, notifyChannel: false });
    return {
      recorder,
      async killSessions(relay) {
        const { rows } = await pool.query(
          "SELECT count(pg_terminate_backend(pid))::int AS n FROM pg_stat_activity WHERE application_name = $1",
          [relay.app],
        );
        return (rows[0] as { n: number }).n;
      },
      async depose() {
        await redis.del(lockKey);
      },
      stats: () => store.stats(),
      purge: (olderThan) => store.purge({ olderThan }),
      async close(drop) {
        await recorder.close().catch(() => undefined);
        if (drop) {
          await pool.query(`DROP TABLE IF EXISTS "${names.table}", "${names.table}_fence"`).catch(() => undefined);
          await admin.deleteTopics({ topics: [names.topic] }).catch(() => undefined);
        }
        await admin.disconnect();
        redis.disconnect();
        await store.close();
        await pool.end();
      },
    };
  },
};
