// A unit test of your own code, with no database and no broker: MemoryStore and MemoryPublisher follow the contracts
// exactly, and a ManualClock moves only when told, so a retry after a broker failure takes no real time. The steps
// below fit in a test of your test runner; in production the same placeOrder takes your real store and transaction.
import { strict as assert } from "node:assert";
import { randomUUID } from "node:crypto";
import {
  jsonPayload,
  ManualClock,
  OutboxRelay,
  type OutboxStore,
  payloadText,
  published,
  transientFailure,
} from "@outbox/core";
import { MemoryPublisher, MemoryStore } from "@outbox/memory";

interface Order {
  id: string;
  customerId: string;
  total: number;
}

/** The code under test: enqueues the order's event in the caller's transaction. */
async function placeOrder<Tx>(store: OutboxStore<Tx>, tx: Tx, order: Order): Promise<void> {
  // (your INSERT of the order runs on tx here)
  await store.enqueue(tx, {
    topic: "orders.created",
    key: order.customerId, // entries of one key are published in enqueue order
    payload: jsonPayload(order),
    idempotencyKey: order.id, // what consumers dedupe on
  });
}

const clock = new ManualClock();
const store = new MemoryStore({ clock });
// The broker refuses the first send (a full queue, say), then takes everything.
let refusals = 1;
const publisher = new MemoryPublisher({
  outcome: () => (refusals-- > 0 ? transientFailure(new Error("queue full")) : published()),
});
const relay = new OutboxRelay({ store, publisher, clock });

// A transaction that rolls back leaves no event behind.
await assert.rejects(
  store.transaction(async (tx) => {
    await placeOrder(store, tx, { id: randomUUID(), customerId: "customer-7", total: 10 });
    throw new Error("payment declined"); // whatever rolls the transaction back
  }),
);
assert.equal((await store.stats()).pending, 0);

const order: Order = { id: randomUUID(), customerId: "customer-7", total: 99.5 };
await store.transaction((tx) => placeOrder(store, tx, order));

await relay.drain(); // claims the entry; the broker refuses it, so it waits for its retry
assert.equal(publisher.messages.length, 0);
clock.advance(1_000); // the first retry comes within the base delay (1 s), on the manual clock
await relay.drain();

const [message] = publisher.topic("orders.created");
assert.ok(message, "the order's event reached the broker");
assert.equal(message.idempotencyKey, order.id);
assert.deepEqual(JSON.parse(payloadText(message)), order);
console.log(`order ${order.id} published to ${message.topic} on the second attempt (in memory, manual clock)`);

await relay.stop();
await store.close();
