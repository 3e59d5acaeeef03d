import type { PGlite, Transaction } from "@electric-sql/pglite";
import {
  jsonPayload,
  OutboxError,
  OutboxErrorCode,
  OutboxRelay,
  payloadText,
  published,
  transientFailure,
} from "@outbox/core";
import { MemoryPublisher } from "@outbox/memory";
import { createPostgresStore, migrate, type PostgresStore } from "@outbox/store-postgres";

export interface Order {
  id: string;
  customer: string;
  totalCents: number;
}

/** The application side: an order row and its outbox entry, in one transaction. */
export async function placeOrder(
  db: PGlite,
  store: PostgresStore,
  order: Order,
  topic = "orders.placed",
): Promise<void> {
  await db.transaction(async (tx: Transaction) => {
    await tx.query("INSERT INTO orders (id, customer, total_cents) VALUES ($1, $2, $3)", [
      order.id,
      order.customer,
      order.totalCents,
    ]);
    await store.enqueue(tx, {
      topic,
      key: order.customer, // per-customer order of events
      payload: jsonPayload(order),
      headers: { "content-type": "application/json" },
      idempotencyKey: `order-placed:${order.id}`,
    });
  });
}

export interface DemoSummary {
  placed: number;
  rejected: Array<{ order: string; code: string }>;
  published: Array<{ key: string | null; idempotencyKey: string; order: Order }>;
  retried: number;
  ordersInTable: number;
  backlog: { pending: number; dead: number };
}

/**
 * The main job: an order service on PGlite (real PostgreSQL, in-process) and a relay publishing
 * its outbox to an in-memory broker that hiccups once, to show a retry.
 */
export async function runDemo(db: PGlite, log: (line: string) => void = () => {}): Promise<DemoSummary> {
  await db.exec(
    "CREATE TABLE IF NOT EXISTS orders (id text PRIMARY KEY, customer text NOT NULL, total_cents int NOT NULL)",
  );
  await migrate(db);
  const store = createPostgresStore({ db });

  const orders: Order[] = [
    { id: "o-1", customer: "ada", totalCents: 1200 },
    { id: "o-2", customer: "grace", totalCents: 4500 },
    { id: "o-3", customer: "ada", totalCents: 300 },
    { id: "o-4", customer: "linus", totalCents: 9900 },
    { id: "o-5", customer: "grace", totalCents: 150 },
  ];
  const summary: DemoSummary = {
    placed: 0,
    rejected: [],
    published: [],
    retried: 0,
    ordersInTable: 0,
    backlog: { pending: 0, dead: 0 },
  };
  for (const order of orders) {
    await placeOrder(db, store, order);
    summary.placed += 1;
    log(`placed   ${order.id} for ${order.customer} (${order.totalCents} cents) + outbox entry, one transaction`);
  }
  // A bug in the app: an event without a topic. Rejected at enqueue; the order row rolls back with it.
  try {
    await placeOrder(db, store, { id: "o-bad", customer: "eve", totalCents: 100 }, "");
  } catch (error) {
    if (!OutboxError.is(error, OutboxErrorCode.InvalidEntry)) throw error;
    summary.rejected.push({ order: "o-bad", code: error.code });
    log(`rejected o-bad: ${error.code} (order row rolled back too)`);
  }

  let hiccups = 0;
  const broker = new MemoryPublisher({
    outcome: (entry) => {
      // The broker fails the first delivery attempt of one entry, transiently.
      if (entry.idempotencyKey === "order-placed:o-2" && entry.attempts === 1) {
        hiccups += 1;
        return transientFailure(new Error("broker: leader not available"));
      }
      return published();
    },
  });
  const relay = new OutboxRelay({ store, publisher: broker, pollMs: 50, retry: { baseDelayMs: 100, jitter: 0 } });
  const done = new Promise<void>((resolve) => {
    relay.on("published", ({ entries }) => {
      for (const entry of entries) {
        const order = JSON.parse(payloadText(entry)) as Order;
        summary.published.push({ key: entry.key, idempotencyKey: entry.idempotencyKey, order });
        log(`published ${entry.topic} key=${entry.key} ${entry.idempotencyKey} (attempt ${entry.attempts})`);
      }
      if (summary.published.length === orders.length) resolve();
    });
  });
  relay.on("retried", ({ entry, error, availableAt }) => {
    summary.retried += 1;
    log(
      `retry     ${entry.idempotencyKey} after "${(error as Error).message}" at +${availableAt.getTime() - Date.now()} ms`,
    );
  });
  relay.on("error", ({ error, phase }) => log(`error     ${phase}: ${String(error)}`));
  relay.start();
  await done;
  await relay.stop();

  const stats = await store.stats();
  summary.backlog = { pending: stats.pending, dead: stats.dead };
  const count = await db.query<{ n: number }>("SELECT count(*)::int AS n FROM orders");
  summary.ordersInTable = count.rows[0]?.n ?? 0;
  await store.close();
  log(
    `done: ${summary.placed} orders, ${summary.published.length} events published, ${hiccups} broker hiccup retried, ` +
      `${summary.rejected.length} invalid entry rejected, backlog pending=${stats.pending} dead=${stats.dead}`,
  );
  return summary;
}
