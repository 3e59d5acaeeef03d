import {
  describePublisherConformance,
  describeRelayConformance,
  type PublisherHarness,
  type StoreHarness,
} from "@outbox/conformance";
import type { ManualClock } from "@outbox/core";
import { createPostgresStore, migrate, type Queryable } from "@outbox/store-postgres";
import { freshIdentifier, inTransaction, pgUrl } from "@outbox/test-support/postgres";
import { TcpProxy } from "@outbox/test-support/tcp-proxy";
import amqplibV2 from "amqplib-v2";
import pg from "pg";
import { afterAll } from "vitest";
import { type AmqpConnectionLike, createRabbitMqPublisher, type RabbitMqPublisher } from "../src/index.js";
import {
  amqpUrl,
  closeAllConnections,
  createQueue,
  deleteQueue,
  QueueReader,
  uniqueName,
  withChannel,
} from "./support/rabbit.js";

/**
 * The kit's harness on the real broker: each topic() is a fresh quorum queue bound to the harness's
 * own exchange under its own name, read back by a real amqplib consumer. The permanent failure is an
 * unroutable entry (no queue bound for its routing key: basic.return).
 */
/** Does this chunk a client sends hold an AMQP basic.publish method frame (class 60, method 40)? */
function holdsBasicPublish(chunk: Buffer): boolean {
  for (let at = 0; at + 11 <= chunk.length; ) {
    const size = chunk.readUInt32BE(at + 3);
    if (chunk[at] === 1 && chunk.readUInt16BE(at + 7) === 60 && chunk.readUInt16BE(at + 9) === 40) return true;
    at += 8 + size;
  }
  return false;
}

async function harness(
  make: (url: string, exchange: string) => Promise<{ publisher: RabbitMqPublisher; close?: () => Promise<void> }>,
  reconnects: boolean,
) {
  // The publisher's connection goes through a proxy: failNextPublish cuts it mid-publish (only where the
  // publisher reconnects by itself), stallBroker silences it.
  const target = new URL(amqpUrl);
  const proxy = await TcpProxy.start(`${target.hostname}:${target.port || "5672"}`);
  const url = new URL(amqpUrl);
  url.hostname = "127.0.0.1";
  url.port = String(proxy.port);
  // An exchange of its own, so that a check may take it away without touching other tests.
  const exchange = uniqueName("outbox.conformance");
  const queues: string[] = [];
  const declare = () =>
    withChannel(async (channel) => {
      await channel.assertExchange(exchange, "direct", { durable: true });
      for (const queue of queues) await channel.bindQueue(queue, exchange, queue);
    });
  await declare();
  const { publisher, close } = await make(url.toString(), exchange);
  const reader = new QueueReader();
  const result: PublisherHarness = {
    publisher,
    topic: async () => {
      const queue = await createQueue({ exchange });
      queues.push(queue);
      return queue;
    },
    receive: (topic, count, timeoutMs) => reader.receive(topic, count, timeoutMs),
    permanentFailure: async (topic) => ({ topic: `${topic}.unbound`, key: "unroutable", payload: new Uint8Array([1]) }),
    // A queue that holds nothing and refuses what does not fit: the broker nacks the publish (transient).
    transientFailure: async () => {
      const full = await createQueue({
        exchange,
        type: "classic",
        arguments: { "x-max-length": 0, "x-overflow": "reject-publish" },
      });
      queues.push(full);
      return { topic: full, key: null, payload: new Uint8Array([2]) };
    },
    transientConditions: {
      // The publisher's exchange is gone (a misconfiguration, a broker rebuilt without it): the publish
      // closes the channel with 404. The operator declares it again (and its bindings).
      "exchange missing (404 NOT_FOUND) until an operator declares it": async (topic) => {
        await withChannel((channel) => channel.deleteExchange(exchange));
        return { entry: { topic, key: "no-exchange", payload: new Uint8Array([3]) }, restore: declare };
      },
    },
    // A queue nobody declared yet: the mandatory publish comes back unroutable until it exists.
    missingTopic: async () => {
      const queue = uniqueName("outbox-rmq-late");
      return {
        topic: queue,
        create: async () => {
          await withChannel(async (channel) => {
            await channel.assertQueue(queue, { durable: true, arguments: { "x-queue-type": "quorum" } });
            await channel.bindQueue(queue, exchange, queue);
          });
          queues.push(queue);
        },
      };
    },
    dropConnection: async () => {
      await closeAllConnections("conformance: dropConnection");
    },
    ...(reconnects ? { failNextPublish: async () => proxy.dropOnNextSend(holdsBasicPublish) } : {}),
    // The broker takes the next publishes; its confirms are held back until release.
    stallBroker: async () => ({ sent: proxy.muteOnNextSend(holdsBasicPublish), release: async () => proxy.unmute() }),
    teardown: async () => {
      await publisher.close();
      await close?.();
      await proxy.close();
      await Promise.all(queues.map(deleteQueue));
      await withChannel((channel) => channel.deleteExchange(exchange)).catch(() => undefined);
    },
  };
  return result;
}

const owned = () => harness(async (url, exchange) => ({ publisher: createRabbitMqPublisher({ url, exchange }) }), true);

describePublisherConformance({
  name: "publisher-rabbitmq (amqplib 0.10.9, RabbitMQ 3.10, url: owned connection)",
  create: owned,
  timeoutMs: 90_000,
});

// The newest amqplib line, on a connection the caller owns (the publisher only opens a channel on it).
describePublisherConformance({
  name: "publisher-rabbitmq (amqplib 2.3.1, caller's connection)",
  create: () =>
    harness(async (url, exchange) => {
      const connection = await amqplibV2.connect(url);
      connection.on("error", () => undefined);
      return {
        publisher: createRabbitMqPublisher({ connection: connection as unknown as AmqpConnectionLike, exchange }),
        close: () => connection.close().catch(() => undefined),
      };
    }, false),
  skip: {
    reconnect:
      "a caller's connection closed by the broker stays closed (the publisher never replaces it); the url variant runs this check",
  },
  timeoutMs: 90_000,
});

// The relay suite end to end on real systems: PostgreSQL store, this publisher on the real
// broker, read back by a real consumer.
const pool = new pg.Pool({ connectionString: pgUrl, max: 4 });
pool.on("error", () => undefined);
afterAll(() => pool.end());

async function postgresStore(clock: ManualClock): Promise<StoreHarness<Queryable>> {
  const schema = freshIdentifier("relay");
  await migrate(pool, { schema });
  const store = createPostgresStore({ pool, schema, clock, listen: false });
  return {
    store,
    clock,
    transaction: (work) => inTransaction(pool, work),
    async teardown() {
      await store.close();
      await pool.query(`DROP SCHEMA "${schema}" CASCADE`);
    },
  };
}

describeRelayConformance({
  name: "store-postgres + publisher-rabbitmq (real PostgreSQL, real RabbitMQ)",
  createStore: postgresStore,
  createPublisher: owned,
  timeoutMs: 180_000,
});
