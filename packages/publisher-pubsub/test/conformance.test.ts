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
import pg from "pg";
import { afterAll } from "vitest";
import { createPubSubPublisher, type PubSubClientLike, PubSubLimits } from "../src/index.js";
import { emulatorHost, newPubSub, TopicReader, uniqueTopic } from "./support/pubsub.js";

/**
 * The publisher talks to the fake server through a TCP proxy (so `dropConnection` can cut it
 * off without restarting the in-memory server); the readers talk to the server directly.
 */
async function harness(): Promise<PublisherHarness> {
  const proxy = await TcpProxy.start(emulatorHost);
  const pubsub = newPubSub(proxy.endpoint);
  const admin = newPubSub();
  const readers = new Map<string, TopicReader>();
  // The client's own promise of each message, so that stallBroker can wait for the client to give up.
  const unsettled = new Set<Promise<unknown>>();
  const tracked: PubSubClientLike = {
    topic(name, options) {
      const topic = pubsub.topic(name, options);
      return {
        publishMessage: (message) => {
          const sent = topic.publishMessage(message);
          const settled: Promise<unknown> = sent.catch(() => undefined);
          unsettled.add(settled);
          void settled.then(() => unsettled.delete(settled));
          return sent;
        },
        resumePublishing: (key) => topic.resumePublishing(key),
        flush: () => topic.flush(),
      };
    },
  };
  const publisher = createPubSubPublisher({ pubsub: tracked, timeoutMs: 10_000 });
  return {
    publisher,
    async topic() {
      const reader = await TopicReader.create(admin);
      readers.set(reader.topic, reader);
      return reader.topic;
    },
    receive: async (topic, count, timeoutMs) => {
      const reader = readers.get(topic);
      if (!reader) throw new Error(`no reader for ${topic}`);
      return reader.receive(count, timeoutMs);
    },
    // Over the size limit: refused before it is sent.
    permanentFailure: async (topic) => ({
      topic,
      key: "oversize",
      payload: new Uint8Array(PubSubLimits.maxMessageBytes + 1).fill(7),
    }),
    dropConnection: async () => {
      if (proxy.cut() === 0) throw new Error("no connection to drop");
      proxy.restore();
    },
    // The next request the client sends (the publish) is not forwarded and its connection is reset:
    // the client pauses the ordering key, which the publisher must resume.
    // Repeated, to outlast the client's own retries of the request.
    failNextPublish: async () => proxy.dropOnNextSend(() => true, 8),
    // The fake takes the next request, its answer never comes back: the client retries on the silent
    // connection until its budget (the publisher's timeoutMs) runs out, so the stalled requests fail for
    // good and the client pauses their ordering keys. Released once the client gave up on every one.
    stallBroker: async () => ({
      sent: proxy.muteOnNextSend(),
      release: async () => {
        await Promise.all([...unsettled]);
        // The publisher's own handlers of those failures run before the next publish.
        await new Promise((resolve) => setImmediate(resolve));
        proxy.drop();
      },
    }),
    // A topic nobody created yet: the fake answers NOT_FOUND, and the client pauses the ordering key.
    missingTopic: async () => {
      const topic = uniqueTopic("outbox-late");
      return {
        topic,
        create: async () => {
          readers.set(topic, await TopicReader.create(admin, topic));
        },
      };
    },
    async teardown() {
      await publisher.close();
      for (const reader of readers.values()) await reader.close();
      await pubsub.close();
      await admin.close();
      await proxy.close();
    },
  };
}

describePublisherConformance({
  name: "publisher-pubsub (@google-cloud/pubsub 6.3.0, pstest fake server)",
  create: harness,
  timeoutMs: 90_000,
});

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
  name: "store-postgres + publisher-pubsub (real PostgreSQL, pstest fake server)",
  createStore: postgresStore,
  createPublisher: harness,
  timeoutMs: 180_000,
});
