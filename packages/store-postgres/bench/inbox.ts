// The inbox's price, measured: consumers that apply each message's effect (one INSERT) through
// `@outbox/inbox` (the dedupe key recorded in the same transaction), against bare consumers doing
// the same INSERT in their own transaction without any dedupe. Same pool, same messages, same
// concurrency, in one run, rounds alternating which goes first; fresh tables each round.
//
//   pnpm --filter @outbox/store-postgres bench:inbox
//
// Each of `OUTBOX_BENCH_LANES` lanes (default 8: a consumer's partitions or a prefetch window)
// handles its share of the messages one after the other, as a consumer does; the lanes run at
// once. Messages carry 1,000 keys; each lane owns whole keys, as a partition does. Environment:
// OUTBOX_PG_URL, OUTBOX_BENCH_MESSAGES (default 20000), OUTBOX_BENCH_RUNS (default 3, medians),
// OUTBOX_BENCH_LANES.
import { loadavg } from "node:os";
import { createInbox, type InboxMessage } from "@outbox/inbox";
import { createPostgresInboxStore, migrateInbox, type Queryable } from "@outbox/store-postgres";
import { median } from "@outbox/test-support/bench";
import { freshIdentifier } from "@outbox/test-support/postgres";
import pg from "pg";
import { describeMachine, inTransaction } from "./support.js";

const url = process.env.OUTBOX_PG_URL ?? "postgres://postgres:postgres@127.0.0.1:5432/outbox_test";
const messageCount = Number(process.env.OUTBOX_BENCH_MESSAGES ?? 20_000);
const runs = Number(process.env.OUTBOX_BENCH_RUNS ?? 3);
const lanes = Number(process.env.OUTBOX_BENCH_LANES ?? 8);
const keys = 1_000;

const pool = new pg.Pool({ connectionString: url, max: lanes + 2 });
const payload = new TextEncoder().encode(JSON.stringify({ order: 42, amount: "19.90", note: "x".repeat(200) }));

const messages: InboxMessage[] = Array.from({ length: messageCount }, (_, i) => ({
  id: `bench-${i}`,
  idempotencyKey: `bench-${i}`,
  key: `key-${i % keys}`,
  topic: "orders",
  payload,
  headers: {},
}));
// Lane = key mod lanes: every message of a key goes to one lane, in order.
const byLane = Array.from({ length: lanes }, (_, lane) => messages.filter((_, i) => (i % keys) % lanes === lane));

async function effectsTable(): Promise<string> {
  const table = freshIdentifier("bench_effects");
  await pool.query(`CREATE TABLE ${table} (id text PRIMARY KEY, key text NOT NULL, payload bytea NOT NULL)`);
  return table;
}

const insertEffect = (tx: Queryable, table: string, message: InboxMessage) =>
  tx.query(`INSERT INTO ${table} (id, key, payload) VALUES ($1, $2, $3)`, [message.id, message.key, message.payload]);

async function timed(work: (lane: readonly InboxMessage[]) => Promise<void>): Promise<number> {
  const started = performance.now();
  await Promise.all(byLane.map((lane) => work(lane)));
  return messageCount / ((performance.now() - started) / 1_000);
}

async function bare(): Promise<number> {
  const table = await effectsTable();
  try {
    return await timed(async (lane) => {
      for (const message of lane) await inTransaction(pool, (tx) => insertEffect(tx, table, message));
    });
  } finally {
    await pool.query(`DROP TABLE ${table}`);
  }
}

async function withInbox(): Promise<number> {
  const table = await effectsTable();
  const inboxTable = freshIdentifier("bench_inbox");
  await migrateInbox(pool, { table: inboxTable });
  const inbox = createInbox({ store: createPostgresInboxStore({ pool, table: inboxTable }), consumer: "bench" });
  try {
    return await timed(async (lane) => {
      for (const message of lane) {
        const result = await inbox.handle(message, (tx) => insertEffect(tx, table, message));
        if (result.status !== "handled") throw new Error(`${message.id}: ${result.status}, expected handled`);
      }
    });
  } finally {
    await inbox.store.close();
    await pool.query(`DROP TABLE ${table}; DROP TABLE ${inboxTable}; DROP TABLE ${inboxTable}_attempts`);
  }
}

console.log(await describeMachine(pool));
console.log(`${messageCount} messages over ${keys} keys, ${lanes} lanes at once, ${runs} rounds`);
const results = { bare: [] as number[], inbox: [] as number[], ratio: [] as number[] };
for (let round = 0; round < runs; round++) {
  // Alternate which goes first: the second of a pair runs on a warmer server.
  const [first, second] = round % 2 === 0 ? [bare, withInbox] : [withInbox, bare];
  const a = await first();
  const b = await second();
  const [bareRate, inboxRate] = first === bare ? [a, b] : [b, a];
  results.bare.push(bareRate);
  results.inbox.push(inboxRate);
  results.ratio.push(inboxRate / bareRate);
  console.log(
    `round ${round + 1}: bare ${Math.round(bareRate)}/s, inbox ${Math.round(inboxRate)}/s, ratio ${(inboxRate / bareRate).toFixed(2)}x (load ${loadavg()
      .map((load) => load.toFixed(1))
      .join(" ")})`,
  );
}
console.log(
  `median: bare ${Math.round(median(results.bare))}/s, inbox ${Math.round(median(results.inbox))}/s, ratio ${median(results.ratio).toFixed(2)}x (target >= 0.8x)`,
);
await pool.end();
