// Steady-rate benchmark: can the store follow a production rate? A producer enqueues at a fixed
// rate (one entry per enqueue call, as a service writing one event per request would) over a set
// of keys, while 3 relays drain the same outbox, each with its own MongoClient (as 3 processes
// would have; in-process here), batch 100 and otherwise default options, publishing to one
// MemoryPublisher. Printed: per 5 s window the entries produced and delivered and the pending
// count; claim and ack latencies; what was still pending when the producer stopped and how long
// the rest took; and the per-key order of first deliveries. A benchmark, not a test: nothing here
// asserts a speed.
//
//   pnpm --filter @outbox/store-mongodb bench        # drain.ts, then this, on both servers
//
// Environment: OUTBOX_BENCH_SERVERS (ferretdb,mongo-java), OUTBOX_BENCH_RATE (entries/s, default
// 220), OUTBOX_BENCH_KEYS (default 1000), OUTBOX_BENCH_SECONDS (default 60), OUTBOX_BENCH_RELAYS
// (default 3), OUTBOX_BENCH_BATCH (relay batch size, default 100), OUTBOX_BENCH_WAKEUPS (1: change
// streams where the server has them; default polling), OUTBOX_BENCH_PRODUCERS (concurrent enqueue
// calls, default 8), OUTBOX_BENCH_PAYLOAD (bytes, default 1024).
import { OutboxRelay, type OutboxStore } from "@outbox/core";
import { MemoryPublisher } from "@outbox/memory";
import { createMongoStore } from "@outbox/store-mongodb";
import { MongoClient } from "mongodb";
import { type BenchServer, benchServers, describeServer, machine, quantile } from "./common.js";

const rate = Number(process.env.OUTBOX_BENCH_RATE ?? 220);
const keys = Number(process.env.OUTBOX_BENCH_KEYS ?? 1000);
const seconds = Number(process.env.OUTBOX_BENCH_SECONDS ?? 60);
const relayCount = Number(process.env.OUTBOX_BENCH_RELAYS ?? 3);
const batchSize = Number(process.env.OUTBOX_BENCH_BATCH ?? 100);
/**
 * Change-stream wake-ups (mongo-java-server has them; FerretDB has none): off unless
 * OUTBOX_BENCH_WAKEUPS=1. mongo-java-server scans its whole in-memory oplog on every change-stream
 * getMore, so with three streams open the server falls behind the producer within seconds (see
 * the README); the relays poll instead, as they do on FerretDB.
 */
const wakeUps = process.env.OUTBOX_BENCH_WAKEUPS === "1";
const producers = Number(process.env.OUTBOX_BENCH_PRODUCERS ?? 8);
const payloadBytes = Number(process.env.OUTBOX_BENCH_PAYLOAD ?? 1024);
const windowMs = 5_000;
const tickMs = 5;
const payload = new Uint8Array(payloadBytes).map((_, i) => (i * 31 + 7) % 256);

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const ms = (value: number) => `${Math.round(value)} ms`;

/** Keys drawn at random (seeded, so every run sees the same sequence): bursts on one key happen. */
function keySource(): () => string {
  let state = 42;
  return () => {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    return `key-${state % keys}`;
  };
}

async function steady(server: BenchServer): Promise<void> {
  const db = "outbox_bench";
  const collection = `steady_${globalThis.crypto.randomUUID().replaceAll("-", "").slice(0, 10)}`;
  const writerClient = new MongoClient(server.url, { appName: "outbox-bench-producer" });
  const writer = createMongoStore({ client: writerClient, db, collection, transactions: false });
  await writer.init();
  console.log(`\n## ${server.name}: ${await describeServer(writerClient)}`);
  console.log(
    `${rate} entries/s for ${seconds} s over ${keys} keys (${payloadBytes} B payloads), ${producers} producers, ${relayCount} relays (own clients, batch ${batchSize}, ${wakeUps ? "change-stream wake-ups" : "polling"}, other options default), MemoryPublisher\n`,
  );

  const entries = writerClient.db(db).collection(writer.names.entries);
  const pendingCount = () => entries.countDocuments({ status: "pending" });
  const claims: number[] = [];
  const acks: number[] = [];
  let claimsInWindow: number[] = [];
  let delivered = 0;
  const publisher = new MemoryPublisher();
  const relayClients: MongoClient[] = [];
  const relays: OutboxRelay[] = [];
  const errors: unknown[] = [];
  for (let i = 0; i < relayCount; i++) {
    const client = new MongoClient(server.url, { appName: `outbox-bench-relay-${i}` });
    relayClients.push(client);
    const store = createMongoStore({
      client,
      db,
      collection,
      transactions: false,
      ...(wakeUps ? {} : { wakeUps: false }),
    });
    await store.init();
    // The store's own methods, with claim and ack timed (the relay calls nothing else per batch).
    const timed: OutboxStore<never> = {
      capabilities: store.capabilities,
      enqueue: (tx, messages) => store.enqueue(tx, messages),
      retry: (items, context) => store.retry(items, context),
      deadLetter: (items, context) => store.deadLetter(items, context),
      release: (ids, context) => store.release(ids, context),
      listDead: (options) => store.listDead(options),
      requeueDead: (ids) => store.requeueDead(ids),
      purge: (request) => store.purge(request),
      stats: () => store.stats(),
      subscribe: (listener) => store.subscribe(listener),
      close: () => store.close(),
      claim: async (request) => {
        const start = performance.now();
        const entries = await store.claim(request);
        const took = performance.now() - start;
        claims.push(took);
        claimsInWindow.push(took);
        return entries;
      },
      ack: async (ids, context) => {
        const start = performance.now();
        await store.ack(ids, context);
        acks.push(performance.now() - start);
      },
    };
    const relay = new OutboxRelay({ store: timed, publisher, id: `relay-${i}`, batchSize });
    relay.on("published", ({ entries }) => {
      delivered += entries.length;
    });
    relay.on("error", ({ error }) => errors.push(error));
    relays.push(relay);
  }
  for (const relay of relays) relay.start();

  // The producer: `producers` callers (a service's request concurrency), each enqueueing one entry
  // per call whenever the rate says one is due. Bounded, as a service's is: FerretDB 1.24 hangs
  // when its PostgreSQL pool is exhausted by concurrent writes (see the README's Limits).
  const nextKey = keySource();
  let produced = 0;
  /** When each entry's enqueue call began and returned: what per-key order is judged by. */
  const enqueued = new Map<string, { began: number; ended: number }>();
  let producing = true;
  const start = performance.now();
  const producer = Promise.all(
    Array.from({ length: producers }, async () => {
      while (producing) {
        if (produced < Math.floor(((performance.now() - start) / 1000) * rate)) {
          produced++;
          const began = performance.now();
          const [id] = await writer.enqueue(null, { topic: "steady", key: nextKey(), payload });
          enqueued.set(id as string, { began, ended: performance.now() });
        } else {
          await sleep(tickMs);
        }
      }
    }),
  );

  console.log("| window | produced | delivered | delivered/s | pending at end | claims | claim p50 | claim max |");
  console.log("|---|---:|---:|---:|---:|---:|---:|---:|");
  let emptyWindows = 0;
  let lastProduced = 0;
  let lastDelivered = 0;
  for (let w = 1; w * windowMs <= seconds * 1000; w++) {
    await sleep(start + w * windowMs - performance.now());
    const inWindow = claimsInWindow;
    claimsInWindow = [];
    const windowDelivered = delivered - lastDelivered;
    if (windowDelivered === 0) emptyWindows++;
    // One count per window (stats() would run four queries, each reading every pending entry on FerretDB).
    const pending = await pendingCount();
    console.log(
      `| ${(w - 1) * 5}-${w * 5} s | ${produced - lastProduced} | ${windowDelivered} | ${Math.round(windowDelivered / (windowMs / 1000))} | ${pending} | ${inWindow.length} | ${ms(quantile(inWindow, 0.5))} | ${ms(Math.max(0, ...inWindow))} |`,
    );
    lastProduced = produced;
    lastDelivered = delivered;
  }
  producing = false;
  await producer;
  const producedFor = (performance.now() - start) / 1000;
  const pendingAtStop = await pendingCount();
  // The rest drains while the relays keep running (watched through the publisher, not the server).
  const drainStart = performance.now();
  while (
    new Set(publisher.messages.map((m) => m.entryId)).size < produced &&
    performance.now() - drainStart < 120_000
  ) {
    await sleep(100);
  }
  const drainSeconds = (performance.now() - drainStart) / 1000;
  // Stopping a relay finishes its deliveries in flight (their acks included).
  for (const relay of relays) await relay.stop();
  const pendingLeft = await pendingCount();

  // Per-key order of first deliveries. Two enqueues of one key that overlap in time have no order
  // (README: Design); one that returned before the other began must be delivered first.
  const firsts = new Set<string>();
  const latestBegan = new Map<string | null, number>();
  let violations = 0;
  for (const m of publisher.messages) {
    if (firsts.has(m.entryId)) continue;
    firsts.add(m.entryId);
    const times = enqueued.get(m.entryId);
    if (m.key === null || !times) continue;
    if (times.ended < (latestBegan.get(m.key) ?? Number.NEGATIVE_INFINITY)) violations++;
    latestBegan.set(m.key, Math.max(times.began, latestBegan.get(m.key) ?? Number.NEGATIVE_INFINITY));
  }
  console.log(
    `\nproduced ${produced} in ${producedFor.toFixed(1)} s (${Math.round(produced / producedFor)}/s); ` +
      `pending when the producer stopped: ${pendingAtStop}, drained in ${drainSeconds.toFixed(1)} s (left: ${pendingLeft}); ` +
      `windows without a delivery: ${emptyWindows}`,
  );
  console.log(
    `claims: ${claims.length}, p50 ${ms(quantile(claims, 0.5))}, p99 ${ms(quantile(claims, 0.99))}, max ${ms(Math.max(...claims))}; ` +
      `acks: ${acks.length}, p50 ${ms(quantile(acks, 0.5))}, p99 ${ms(quantile(acks, 0.99))}, max ${ms(Math.max(...acks))}`,
  );
  console.log(
    `delivered ${firsts.size} distinct of ${produced} (${publisher.messages.length - firsts.size} duplicates), ` +
      `key-order violations: ${violations}, relay errors: ${errors.length}`,
  );
  for (const error of errors.slice(0, 3)) console.log(`  error: ${String(error)}`);
  const database = writerClient.db(db);
  for (const name of Object.values(writer.names).slice(1)) await database.dropCollection(name).catch(() => undefined);
  await writer.close();
  await writerClient.close();
  await Promise.all(relayClients.map((client) => client.close()));
}

console.log(machine());
for (const server of benchServers()) await steady(server);
