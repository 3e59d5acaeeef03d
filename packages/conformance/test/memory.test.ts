import { MemoryLockBackend, MemoryPublisher } from "@outbox/memory";
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
    // failNextPublish() arms a lost connection for the next few sends the in-memory client makes.
    let failSends = 0;
    const publisher = new MemoryPublisher({
      outcome: (entry) => {
        if (entry.payload.byteLength > 1024 * 1024) return { status: "permanent", error: new Error("too large") };
        // The transient failure: a "full queue" for this one payload size.
        if (entry.payload.byteLength === 1_500) return { status: "transient", error: new Error("queue full") };
        if (failSends > 0) {
          failSends -= 1;
          return { status: "transient", error: new Error("connection lost mid-publish") };
        }
        return { status: "published" };
      },
    });
    return {
      publisher,
      topic: async () => uniqueName("topic"),
      async receive(topic) {
        // The in-memory broker keeps the entry id next to the message, as Redis Streams keeps it in a field.
        return publisher.topic(topic).map((m) => ({ ...m, id: m.entryId }));
      },
      async permanentFailure(topic) {
        return { topic, key: null, payload: new Uint8Array(2 * 1024 * 1024) };
      },
      transientFailure: async (topic) => ({ topic, key: null, payload: new Uint8Array(1_500) }),
      failNextPublish: async () => {
        failSends = 3;
      },
      teardown: async () => {},
    };
  },
  skip: { reconnect: "the in-memory broker has no connection to drop" },
});

describeLockConformance({
  name: "MemoryLockBackend",
  // The in-memory "server" belongs to this test alone.
  allowServerRestarts: true,
  async create() {
    const { ManualClock } = await import("@outbox/core");
    const clock = new ManualClock();
    const backend = new MemoryLockBackend({ clock });
    return {
      backend,
      elapse: async (ms) => clock.advance(ms),
      restart: async () => backend.restart(),
      // Every holding goes (the tests use one lock name each).
      expire: async () => backend.restart(),
      // No session: dropping the holding is the same as ending it.
      dropHolding: async () => backend.restart(),
      stepClockBack: async (ms) => clock.advance(-ms),
      teardown: () => backend.close(),
    };
  },
});
