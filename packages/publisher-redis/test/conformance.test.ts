import {
  describePublisherConformance,
  describeRelayConformance,
  memoryStoreHarness,
  type PublisherHarness,
  uniqueName,
} from "@outbox/conformance";
import { closeClient, closeClients, newClient } from "@outbox/test-support/redis";
import { afterAll } from "vitest";
import { createRedisStreamPublisher } from "../src/index.js";
import { readStream } from "./support.js";

afterAll(closeClients);

async function harness(): Promise<PublisherHarness> {
  const client = await newClient();
  // The consumer and the test's admin commands use their own connections.
  const reader = await newClient({ maxRetriesPerRequest: null });
  const admin = await newClient();
  const keys: string[] = [];
  const publisher = createRedisStreamPublisher({ client });
  return {
    publisher,
    async topic() {
      const stream = uniqueName("stream");
      keys.push(stream);
      return stream;
    },
    receive: (topic, count, timeoutMs) => readStream(reader, topic, count, timeoutMs),
    async permanentFailure(topic) {
      // A key of another type: XADD fails with WRONGTYPE for the entries routed there only.
      const wrongType = `${topic}:not-a-stream`;
      keys.push(wrongType);
      await admin.set(wrongType, "a string, not a stream");
      return { topic: wrongType, key: null, payload: new TextEncoder().encode("refused") };
    },
    async dropConnection() {
      const id = await client.client("ID");
      await admin.client("KILL", "ID", String(id));
    },
    async teardown() {
      if (keys.length > 0) await admin.del(...keys);
      await Promise.all([client, reader, admin].map(closeClient));
    },
  };
}

describePublisherConformance({ name: "publisher-redis (ioredis, Redis Streams)", create: harness });

// The relay suite over this publisher on real Redis, read back with XREAD (store and lock: the
// kit's in-memory ones on its clock).
describeRelayConformance({
  name: "MemoryStore + publisher-redis (real Redis)",
  createStore: memoryStoreHarness,
  createPublisher: harness,
});
