// MySQL (MariaDB) store -> RabbitMQ, leader election on an etcd lock.
import { createEtcdLockBackend } from "@outbox/lock-etcd";
import { createRabbitMqPublisher, decodeMessage } from "@outbox/publisher-rabbitmq";
import { createMySqlStore, migrate } from "@outbox/store-mysql";
import { amqpUrl, mysqlUrl } from "@outbox/test-support/services";
import { sleep } from "@outbox/test-support/wait";
import amqplib from "amqplib";
import mysql from "mysql2/promise";
import type { Delivery } from "../check.js";
import { type Recorder, SeqHeader, type Stack, type StackAdmin } from "../stack.js";
import { etcdClient } from "./etcd.js";

const exchange = "outbox.chaos";

/**
 * An amqplib consumer of the run's quorum queue (manual acks). A message the broker hands us
 * again (`redelivered`: our ack was lost with our connection) is ours, not a relay's duplicate,
 * and is not recorded twice. Reconnects if the broker drops it.
 */
async function rabbitRecorder(queue: string): Promise<Recorder> {
  const deliveries: Delivery[] = [];
  const errors: string[] = [];
  const seen = new Set<string>();
  let closed = false;
  let connection: amqplib.ChannelModel | null = null;
  const open = async (): Promise<void> => {
    const opened = await amqplib.connect(amqpUrl);
    connection = opened;
    opened.on("error", (error: Error) => errors.push(`recorder connection: ${error.message}`));
    opened.on("close", () => {
      if (!closed) void reopen();
    });
    const channel = await opened.createChannel();
    channel.on("error", (error: Error) => errors.push(`recorder channel: ${error.message}`));
    await channel.prefetch(1_000);
    await channel.consume(queue, (message) => {
      if (!message) return;
      const at = Date.now();
      channel.ack(message);
      const decoded = decodeMessage(message);
      if (message.fields.redelivered && seen.has(decoded.idempotencyKey)) return;
      seen.add(decoded.idempotencyKey);
      deliveries.push({
        id: decoded.idempotencyKey,
        key: decoded.key ?? "",
        seq: Number(decoded.headers[SeqHeader]),
        at,
      });
    });
  };
  const reopen = async (): Promise<void> => {
    while (!closed) {
      try {
        await open();
        return;
      } catch (error) {
        errors.push(`recorder reconnect: ${(error as Error).message}`);
        await sleep(500);
      }
    }
  };
  await open();
  return {
    deliveries,
    errors,
    async close() {
      closed = true;
      await connection?.close().catch(() => undefined);
    },
  };
}

export const stack: Stack = {
  id: "mysql-rabbitmq",
  title: "MySQL (MariaDB) -> RabbitMQ, etcd lock",
  db: new URL(mysqlUrl).host,
  broker: new URL(amqpUrl).host,
  resetGapMs: 0,
  settings: {
    store: "createMySqlStore({ pool, table }): defaults (local wake-ups only: other processes' relays poll)",
    publisher:
      "createRabbitMqPublisher({ url, exchange }): defaults (timeoutMs 20000); a quorum queue bound to a direct exchange",
    lock: "createEtcdLockBackend({ client }): defaults; Etcd3 client with dialTimeout 1000",
  },
  dbUrl(endpoint) {
    const url = new URL(mysqlUrl);
    url.host = endpoint;
    return url.toString();
  },
  async openStore(url, names, hooks) {
    const pool = mysql.createPool({ uri: url, connectionLimit: 10 });
    pool.pool.on("connection", (connection: { threadId: number }) => hooks.onSession?.(connection.threadId));
    const store = createMySqlStore({
      pool,
      table: names.table,
      ...(hooks.onError ? { onError: hooks.onError } : {}),
    });
    return {
      store,
      enqueueCommitted: (messages) => store.transaction((tx) => store.enqueue(tx, messages)).then(() => undefined),
      async close() {
        await store.close();
        await pool.end();
      },
    };
  },
  async openPublisher(endpoint) {
    const url = new URL(amqpUrl);
    url.host = endpoint;
    return createRabbitMqPublisher({ url: url.toString(), exchange });
  },
  async openLock() {
    const client = etcdClient();
    return { backend: createEtcdLockBackend({ client }), close: async () => client.close() };
  },
  async prepare(names): Promise<StackAdmin> {
    const pool = mysql.createPool({ uri: mysqlUrl, connectionLimit: 2 });
    await migrate(pool, { table: names.table });
    const setup = await amqplib.connect(amqpUrl);
    const channel = await setup.createChannel();
    await channel.assertExchange(exchange, "direct", { durable: true });
    await channel.assertQueue(names.topic, { durable: true, arguments: { "x-queue-type": "quorum" } });
    await channel.bindQueue(names.topic, exchange, names.topic);
    const recorder = await rabbitRecorder(names.topic);
    const etcd = etcdClient();
    const lockKey = createEtcdLockBackend({ client: etcd }).lockKey(names.lock);
    const store = createMySqlStore({ pool, table: names.table, wakeUps: false });
    return {
      recorder,
      async killSessions(relay) {
        let killed = 0;
        for (const id of relay.sessions) {
          // Ids of connections that closed meanwhile are unknown to the server (error 1094).
          killed += await pool.query(`KILL CONNECTION ${Number(id)}`).then(
            () => 1,
            () => 0,
          );
        }
        return killed;
      },
      async depose() {
        await etcd.delete().key(lockKey);
      },
      stats: () => store.stats(),
      purge: (olderThan) => store.purge({ olderThan }),
      async close(drop) {
        await recorder.close();
        if (drop) {
          await pool.query(`DROP TABLE IF EXISTS \`${names.table}\`, \`${names.table}_fence\``).catch(() => undefined);
          await channel.deleteQueue(names.topic).catch(() => undefined);
        }
        await setup.close().catch(() => undefined);
        etcd.close();
        await store.close();
        await pool.end();
      },
    };
  },
};
