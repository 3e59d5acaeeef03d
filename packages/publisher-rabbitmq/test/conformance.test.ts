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
  TEST_EXCHANGE,
} from "./support/rabbit.js";

/**
 * The kit's harness on the real broker: each topic() is a fresh quorum queue bound to the test
 * exchange under its own name, read back by a real amqplib consumer. The permanent failure is an
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
  make: (url: string) => Promise<{ publisher: RabbitMqPublisher; close?: () => Promise<void> }>,
  proxied = false,
) {
  // With `proxied`, the publisher's connection goes through a proxy that failNextPublish cuts mid-publish.
  const target = new URL(amqpUrl);
  const proxy = proxied ? await TcpProxy.start(`${target.hostname}:${target.port || "5672"}`) : undefined;
  const url = new URL(amqpUrl);
  if (proxy) {
    url.hostname = "127.0.0.1";
    url.port = String(proxy.port);
  }
  const { publisher, close } = await make(url.toString());
  const reader = new QueueReader();
  const queues: string[] = [];
  const result: PublisherHarness = {
    publisher,
    topic: async () => {
      const queue = await createQueue();
      queues.push(queue);
      return queue;
    },
    receive: (topic, count, timeoutMs) => reader.receive(topic, count, timeoutMs),
    permanentFailure: async (topic) => ({ topic: `${topic}.unbound`, key: "unroutable", payload: new Uint8Array([1]) }),
    // A queue that holds nothing and refuses what does not fit: the broker nacks the publish (transient).
    transientFailure: async () => {
      const full = await createQueue({
        type: "classic",
        arguments: { "x-max-length": 0, "x-overflow": "reject-publish" },
      });
      queues.push(full);
      return { topic: full, key: null, payload: new Uint8Array([2]) };
    },
    dropConnection: async () => {
      await closeAllConnections("conformance: dropConnection");
    },
    ...(proxy ? { failNextPublish: async () => proxy.dropOnNextSend(holdsBasicPublish) } : {}),
    teardown: async () => {
      await publisher.close();
      await close?.();
      await proxy?.close();
      await Promise.all(queues.map(deleteQueue));
    },
  };
  return result;
}

const owned = () =>
  harness(async (url) => ({ publisher: createRabbitMqPublisher({ url, exchange: TEST_EXCHANGE }) }), true);

describePublisherConformance({
  name: "publisher-rabbitmq (amqplib 0.10.9, RabbitMQ 3.10, url: owned connection)",
  create: owned,
  timeoutMs: 90_000,
});

// The newest amqplib line, on a connection the caller owns (the publisher only opens a channel on it).
describePublisherConformance({
  name: "publisher-rabbitmq (amqplib 2.3.1, caller's connection)",
  create: () =>
    harness(async () => {
      const connection = await amqplibV2.connect(amqpUrl);
      connection.on("error", () => undefined);
      return {
        publisher: createRabbitMqPublisher({
          connection: connection as unknown as AmqpConnectionLike,
          exchange: TEST_EXCHANGE,
        }),
        close: () => connection.close().catch(() => undefined),
      };
    }),
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
