import {
  describePublisherConformance,
  describeRelayConformance,
  type PublisherHarness,
  type StoreHarness,
} from "@outbox/conformance";
import type { ManualClock } from "@outbox/core";
import { createPostgresStore, migrate, type Queryable } from "@outbox/store-postgres";
import { freshIdentifier, inTransaction, pgUrl } from "@outbox/test-support/postgres";
import pg from "pg";
import { afterAll } from "vitest";
import { createKafkaPublisher, type KafkaPublisherOptions } from "../src/index.js";
import { createTopic, dropConnections, faultySockets, newKafka, receive } from "./support/kafka.js";

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
    // The next Produce requests are written into a connection that is then destroyed, more times
    // than kafkajs retries (5), so the publish itself fails; later ones go through.
    failNextPublish: async () => sockets.dropProduce(8),
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
