import {
  describePublisherConformance,
  describeRelayConformance,
  type PublisherHarness,
  type StoreHarness,
} from "@outbox/conformance";
import type { ManualClock } from "@outbox/core";
import { createPostgresStore, migrate, type Queryable } from "@outbox/store-postgres";
import { freshIdentifier, inTransaction, pgUrl } from "@outbox/test-support/postgres";
import type { ProducerBatch } from "kafkajs";
import pg from "pg";
import { afterAll } from "vitest";
import { createKafkaPublisher, type KafkaProducerLike, type KafkaPublisherOptions } from "../src/index.js";
import { createTopic, dropConnections, faultySockets, newKafka, plainPartitioner, receive } from "./support/kafka.js";

/** Over the broker's message.max.bytes (1048588 by default). */
const OVERSIZE = 2 * 1024 * 1024;

async function harness(options: KafkaPublisherOptions): Promise<PublisherHarness> {
  const kafka = newKafka();
  const admin = kafka.admin();
  await admin.connect();
  // The publisher's own client, on sockets that can lose a Produce request mid-publish.
  const sockets = faultySockets();
  const publisher = createKafkaPublisher({ kafka: newKafka({ socketFactory: sockets.socketFactory }) }, options);
  return {
    publisher,
    topic: () => createTopic(admin),
    receive: (topic, count, timeoutMs) => receive(kafka, topic, count, timeoutMs),
    permanentFailure: async (topic) => ({ topic, key: "oversize", payload: new Uint8Array(OVERSIZE).fill(7) }),
    // No transientFailure(): a one-broker cluster has no broker-side "not now" for a record (min.insync.replicas
    // above the replication factor is not enforced, an unknown topic is permanent); broker-failure covers
    // transient failures inside the client.
    dropConnection: async () => {
      if ((await dropConnections()) === 0) throw new Error("no broker connection to drop");
    },
    // The next Produce requests reach the broker, which appends their records, but each answer is lost
    // (the connection is destroyed as it arrives), as often as kafkajs tries (1 + 5 retries): the publish
    // fails, and the producer's sequence numbers no longer match the broker's. Later ones go through.
    failNextPublish: async () => sockets.loseProduceAnswers(6),
    // The broker appends the next Produce request's records; its answer is held back until release.
    stallBroker: async () => ({ sent: sockets.muteNextProduce(), release: async () => sockets.unmute() }),
    teardown: async () => {
      await publisher.close();
      await admin.disconnect();
    },
  };
}

// Default: oversize records are refused before they are sent (maxMessageBytes pre-check).
describePublisherConformance({
  name: "publisher-kafka (kafkajs 2.2.4, Apache Kafka 3.9.1)",
  create: () => harness({}),
  timeoutMs: 90_000,
});

// Pre-check off: the broker itself answers MESSAGE_TOO_LARGE for the oversize record's
// partition, and the publisher isolates it while its neighbours are published exactly once.
describePublisherConformance({
  name: "publisher-kafka, broker-side MESSAGE_TOO_LARGE (no pre-check)",
  create: () => harness({ maxMessageBytes: 64 * 1024 * 1024 }),
  timeoutMs: 90_000,
});

/**
 * Your producer (`{ producer }`): a kafkajs idempotent producer behind a handle whose producer the
 * test replaces, as its owner recreates it once its sequence numbers went out of step (the publisher
 * cannot renew a producer it does not own: README, Limits).
 */
async function callerProducerHarness(): Promise<PublisherHarness> {
  const kafka = newKafka();
  const admin = kafka.admin();
  await admin.connect();
  const sockets = faultySockets();
  const client = newKafka({ socketFactory: sockets.socketFactory });
  // One retry: a send whose answers are all lost fails after 2 attempts.
  const attempts = 2;
  const config = {
    idempotent: true,
    maxInFlightRequests: 1,
    createPartitioner: plainPartitioner,
    retry: { retries: attempts - 1, initialRetryTime: 100 },
  };
  let producer = client.producer(config);
  await producer.connect();
  const handle: KafkaProducerLike = {
    connect: () => producer.connect(),
    disconnect: () => producer.disconnect(),
    sendBatch: (batch) => producer.sendBatch(batch as ProducerBatch),
    isIdempotent: () => true,
  };
  const publisher = createKafkaPublisher({ producer: handle });
  return {
    publisher,
    topic: () => createTopic(admin),
    receive: (topic, count, timeoutMs) => receive(kafka, topic, count, timeoutMs),
    permanentFailure: async (topic) => ({ topic, key: "oversize", payload: new Uint8Array(OVERSIZE).fill(7) }),
    dropConnection: async () => {
      if ((await dropConnections()) === 0) throw new Error("no broker connection to drop");
    },
    // Dropped before the broker sees them: a lost answer would leave your producer out of step for good.
    failNextPublish: async () => sockets.dropProduce(attempts),
    stallBroker: async () => ({ sent: sockets.muteNextProduce(), release: async () => sockets.unmute() }),
    transientConditions: {
      "producer sequence numbers out of step (OUT_OF_ORDER_SEQUENCE_NUMBER) until the owner recreates it": async (
        topic,
      ) => {
        const key = "out-of-step";
        // The broker appends this record on every attempt, kafkajs never reads an answer and rolls the
        // partition's sequence number back: the next different batch of the partition is out of order.
        sockets.loseProduceAnswers(attempts);
        const answered = await producer.send({ topic, messages: [{ key, value: "answer lost" }] }).then(
          () => true,
          () => false,
        );
        if (answered) throw new Error("the send whose answers were to be lost was answered");
        return {
          entry: { topic, key, payload: new TextEncoder().encode("out of step") },
          restore: async () => {
            const stale = producer;
            producer = client.producer(config);
            await producer.connect();
            await stale.disconnect();
          },
        };
      },
    },
    teardown: async () => {
      await publisher.close();
      await producer.disconnect();
      await admin.disconnect();
    },
  };
}

describePublisherConformance({
  name: "publisher-kafka, your idempotent producer ({ producer })",
  create: callerProducerHarness,
  timeoutMs: 90_000,
});

// The relay suite end to end on real systems: PostgreSQL store, this publisher on the real
// broker, read back by a real consumer (the lock is the kit's in-memory one on its clock).
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
  name: "store-postgres + publisher-kafka (real PostgreSQL, real broker)",
  createStore: postgresStore,
  createPublisher: () => harness({}),
  timeoutMs: 180_000,
});
