// The in-memory demo: no database, no broker. MemoryStore and MemoryPublisher (@outbox/memory) follow the contracts
// exactly (unit tests of your own code can use them); each adapter's Quick start runs the same flow on a real
// database and broker.
import { randomUUID } from "node:crypto";
import { jsonPayload, OutboxRelay } from "@outbox/core";
import { MemoryPublisher, MemoryStore } from "@outbox/memory";

const store = new MemoryStore();
const publisher = new MemoryPublisher();
const relay = new OutboxRelay({ store, publisher });
relay.start();

// The entry commits with the transaction (a real store's enqueue takes your database transaction).
const order = { id: randomUUID(), customerId: "customer-7", total: 99.5 };
const delivered = published(relay, order.id);
await store.transaction((tx) =>
  store.enqueue(tx, {
    topic: "orders.created",
    key: order.customerId, // entries of one key are published in enqueue order
    payload: jsonPayload(order),
    idempotencyKey: order.id, // what consumers dedupe on
  }),
);

await delivered;
for (const message of publisher.messages) {
  console.log(`order ${message.idempotencyKey} published to ${message.topic} (in memory)`);
}

await relay.stop();
await store.close();

/** Resolves once the relay has published the entry with this idempotency key. */
function published(relay: OutboxRelay, idempotencyKey: string, timeoutMs = 15_000): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`not published within ${timeoutMs} ms`)), timeoutMs);
    const off = relay.on("published", ({ entries }) => {
      if (!entries.some((entry) => entry.idempotencyKey === idempotencyKey)) return;
      clearTimeout(timer);
      off();
      resolve();
    });
  });
}
