// The in-memory demo of the whole chain: an outbox publishes an order event, a consumer handles it through the
// inbox, and the broker delivers it twice (as brokers do after a crash): the effect is applied once. With
// PostgreSQL, `createPostgresInboxStore({ pool })` from @outbox/store-postgres replaces MemoryInboxStore.
import { randomUUID } from "node:crypto";
import { jsonPayload, OutboxRelay, payloadText } from "@outbox/core";
import { createInbox, type InboxMessage, MemoryInboxStore } from "@outbox/inbox";
import { MemoryPublisher, MemoryStore } from "@outbox/memory";

// The producing service: the order's event, enqueued in its transaction, published by the relay.
const store = new MemoryStore();
const publisher = new MemoryPublisher();
const relay = new OutboxRelay({ store, publisher });
const order = { id: randomUUID(), customerId: "customer-7", total: 99.5 };
await store.transaction((tx) =>
  store.enqueue(tx, {
    topic: "orders.created",
    key: order.customerId,
    payload: jsonPayload(order),
    idempotencyKey: order.id, // what the inbox dedupes on
  }),
);
await relay.drain(); // publishes until nothing is pending
await relay.stop();

// The consuming service: the shipment row and the inbox key commit in one transaction.
const inbox = createInbox({ store: new MemoryInboxStore(), consumer: "shipping", maxAttempts: 5 });
const shipments: string[] = [];
const [published] = publisher.messages;
if (!published) throw new Error("nothing was published");
const received: InboxMessage = {
  id: published.entryId,
  idempotencyKey: published.idempotencyKey,
  key: published.key,
  payload: published.payload,
};
for (const delivery of [1, 2]) {
  const result = await inbox.handle(received, async (tx, message) => {
    const placed = JSON.parse(payloadText({ payload: message.payload as Uint8Array })) as typeof order;
    // A real store's tx is your database transaction: INSERT the shipment (and enqueue follow-ups) on it.
    tx.onCommit(() => shipments.push(placed.id));
  });
  console.log(`delivery ${delivery}: ${result.status}`); // handled, then duplicate
}
if (shipments.length !== 1) throw new Error(`expected one shipment, got ${shipments.length}`);
console.log(`order ${order.id} published, and its shipment created once by the inbox`);

await store.close();
