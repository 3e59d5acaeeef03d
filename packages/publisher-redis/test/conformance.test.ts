import {
  describePublisherConformance,
  describeRelayConformance,
  memoryStoreHarness,
  type PublisherHarness,
  uniqueName,
} from "@outbox/conformance";
import { closeClient, closeClients, newClient } from "@outbox/test-support/redis";
import { redisUrl } from "@outbox/test-support/services";
import { TcpProxy } from "@outbox/test-support/tcp-proxy";
import { afterAll } from "vitest";
import { createRedisStreamPublisher } from "../src/index.js";
import { readStream } from "./support.js";

afterAll(closeClients);

/** A chunk that holds a write of the publisher: XADD, or the run script (which XADDs). */
const writes = (chunk: Buffer) => /xadd/i.test(chunk.toString("latin1"));

async function harness(): Promise<PublisherHarness> {
  // The publisher's connection goes through a proxy, so failNextPublish can cut it mid-XADD.
  const target = new URL(redisUrl);
  const proxy = await TcpProxy.start(`${target.hostname}:${target.port || "6379"}`);
  const proxied = new URL(redisUrl);
  proxied.hostname = "127.0.0.1";
  proxied.port = String(proxy.port);
  const client = await newClient(undefined, proxied.toString());
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
    // The next XADDs the client writes are not forwarded and their connection is reset. ioredis resends
    // unanswered commands after each reconnect: repeated past the client's commandTimeout (1 s), so
    // the publish itself fails.
    failNextPublish: async () => proxy.dropOnNextSend(writes, 40),
    // Redis runs the next XADDs (or the run script), its replies are held back until release.
    stallBroker: async () => ({ sent: proxy.muteOnNextSend(writes), release: async () => proxy.unmute() }),
    transientConditions: {
      // No per-connection way to fill Redis' memory: maxmemory of the shared server is lowered for the one
      // publish under the condition (noeviction: writes are refused, nothing is evicted) and restored at once.
      "OOM (maxmemory reached)": async (topic) => {
        const [, policy] = (await admin.config("GET", "maxmemory-policy")) as [string, string];
        if (policy !== "noeviction")
          throw new Error(`maxmemory-policy is ${policy}: lowering maxmemory would evict keys`);
        const [, before] = (await admin.config("GET", "maxmemory")) as [string, string];
        // "1" is another test's condition in flight, never the server's own setting.
        const restore = before === "1" ? "0" : before;
        await admin.config("SET", "maxmemory", "1");
        return {
          entry: { topic, key: "oom", payload: new TextEncoder().encode("refused for now") },
          restore: async () => {
            await admin.config("SET", "maxmemory", restore);
          },
        };
      },
    },
    async teardown() {
      if (keys.length > 0) await admin.del(...keys);
      await Promise.all([client, reader, admin].map(closeClient));
      await proxy.close();
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
