import { MemoryLockBackend, MemoryPublisher } from "@outbox/core";
import {
  describeLockConformance,
  describePublisherConformance,
  describeRelayConformance,
  describeStoreConformance,
  memoryStoreHarness,
  uniqueName,
} from "../src/index.js";

// The kit tests itself against the in-memory reference adapters.

describeStoreConformance({ name: "MemoryStore", create: memoryStoreHarness });

describeRelayConformance({ name: "MemoryStore + MemoryLockBackend", createStore: memoryStoreHarness });

describePublisherConformance({
  name: "MemoryPublisher",
  async create() {
    const publisher = new MemoryPublisher({
      outcome: (entry) =>
        entry.payload.byteLength > 1024 * 1024
          ? { status: "permanent", error: new Error("too large") }
          : { status: "published" },
    });
    return {
      publisher,
      topic: async () => uniqueName("topic"),
      async receive(topic) {
        return publisher.topic(topic).map((m) => ({ ...m }));
      },
      async permanentFailure(topic) {
        return { topic, key: null, payload: new Uint8Array(2 * 1024 * 1024) };
      },
      teardown: async () => {},
    };
  },
  skip: { reconnect: "the in-memory broker has no connection to drop" },
});

describeLockConformance({
  name: "MemoryLockBackend",
  async create() {
    const { ManualClock } = await import("@outbox/core");
    const clock = new ManualClock();
    const backend = new MemoryLockBackend({ clock });
    return {
      backend,
      elapse: async (ms) => clock.advance(ms),
      restart: async () => backend.restart(),
      teardown: () => backend.close(),
    };
  },
});
