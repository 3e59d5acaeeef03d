import {
  describePublisherConformance,
  describeRelayConformance,
  type PublisherHarness,
  type StoreHarness,
} from "@outbox/conformance";
import type { ManualClock } from "@outbox/core";
import { createPostgresStore, migrate, type Queryable } from "@outbox/store-postgres";
import { freshIdentifier, inTransaction, pgUrl } from "@outbox/test-support/postgres";
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
async function harness(make: () => Promise<{ publisher: RabbitMqPublisher; close?: () => Promise<void> }>) {
  const { publisher, close } = await make();
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
    dropConnection: async () => {
      await closeAllConnections("conformance: dropConnection");
    },
    teardown: async () => {
      await publisher.close();
      await close?.();
      await Promise.all(queues.map(deleteQueue));
    },
  };
  return result;
}

const owned = () =>
  harness(async () => ({ publisher: createRabbitMqPublisher({ url: amqpUrl, exchange: TEST_EXCHANGE }) }));

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
