// Drain-rate benchmark on the MongoDB-wire servers of scripts/services.sh (FerretDB 1.24 on
// PostgreSQL, mongo-java-server): a pre-filled outbox drained through the store (claim + ack
// loop), for four key shapes, next to a bare ceiling measured in the same run: the same documents
// drained with a raw find + updateMany loop (no keys, leases, tickets or fencing).
//
//   pnpm --filter @outbox/store-mongodb bench     # this, then steady.ts
//
// Environment: OUTBOX_BENCH_SERVERS (ferretdb,mongo-java), OUTBOX_BENCH_ROWS (default 1000),
// OUTBOX_BENCH_BATCH (default 100), OUTBOX_BENCH_PAYLOAD (bytes, default 1024), OUTBOX_BENCH_RUNS
// (default 3: median).
import { createMongoStore, type MongoStore } from "@outbox/store-mongodb";
import { MongoClient } from "mongodb";
import { type BenchServer, benchServers, describeServer, machine, median } from "./common.js";

const rows = Number(process.env.OUTBOX_BENCH_ROWS ?? 1000);
const batch = Number(process.env.OUTBOX_BENCH_BATCH ?? 100);
const payloadBytes = Number(process.env.OUTBOX_BENCH_PAYLOAD ?? 1024);
const runs = Number(process.env.OUTBOX_BENCH_RUNS ?? 3);
const payload = new Uint8Array(payloadBytes).map((_, i) => (i * 31 + 7) % 256);

async function drainBench(server: BenchServer): Promise<void> {
  const client = new MongoClient(server.url, { appName: "outbox-bench" });
  const db = client.db("outbox_bench");

  async function filled(keyOf: (i: number) => string | null): Promise<MongoStore> {
    const collection = `bench_${globalThis.crypto.randomUUID().replaceAll("-", "").slice(0, 10)}`;
    const store = createMongoStore({ client, db: "outbox_bench", collection, transactions: false });
    await store.init();
    for (let done = 0; done < rows; done += 500) {
      const count = Math.min(500, rows - done);
      await store.enqueue(
        null,
        Array.from({ length: count }, (_, i) => ({ topic: "bench", key: keyOf(done + i), payload })),
      );
    }
    return store;
  }

  async function drop(store: MongoStore): Promise<void> {
    for (const name of Object.values(store.names).slice(1)) await db.dropCollection(name).catch(() => undefined);
    await store.close();
  }

  async function drainStore(keyOf: (i: number) => string | null): Promise<number> {
    const store = await filled(keyOf);
    const start = performance.now();
    let drained = 0;
    for (;;) {
      const entries = await store.claim({ claimer: "bench", limit: batch, leaseMs: 60_000 });
      if (entries.length === 0) break;
      await store.ack(
        entries.map((e) => e.id),
        { claimer: "bench" },
      );
      drained += entries.length;
    }
    const seconds = (performance.now() - start) / 1000;
    await drop(store);
    if (drained !== rows) throw new Error(`drained ${drained} of ${rows}`);
    return seconds;
  }

  /** The ceiling: the same documents, drained by a raw find + updateMany loop. */
  async function drainBare(): Promise<number> {
    const store = await filled(() => null);
    const entries = db.collection(store.names.entries);
    const start = performance.now();
    let drained = 0;
    for (;;) {
      const docs = await entries
        .find({ status: "pending" }, { projection: { _id: 1, payload: 1 }, sort: { _id: 1 }, limit: batch })
        .toArray();
      if (docs.length === 0) break;
      await entries.updateMany({ _id: { $in: docs.map((d) => d._id) } }, { $set: { status: "published" } });
      drained += docs.length;
    }
    const seconds = (performance.now() - start) / 1000;
    await drop(store);
    if (drained !== rows) throw new Error(`bare drained ${drained} of ${rows}`);
    return seconds;
  }

  const workloads: Array<{ name: string; run: () => Promise<number> }> = [
    { name: "bare ceiling: find + updateMany", run: drainBare },
    { name: "store, no keys", run: () => drainStore(() => null) },
    { name: "store, single hot key", run: () => drainStore(() => "hot") },
    { name: "store, 1,000 keys", run: () => drainStore((i) => `key-${i % 1000}`) },
    { name: "store, distinct keys", run: () => drainStore((i) => `key-${i}`) },
  ];

  console.log(`\n## ${server.name}: ${await describeServer(client)}`);
  console.log(`draining ${rows} entries of ${payloadBytes} bytes, batch ${batch}, median of ${runs}\n`);
  const results: Array<{ name: string; seconds: number }> = [];
  for (const workload of workloads) {
    const times: number[] = [];
    for (let run = 0; run < runs; run++) times.push(await workload.run());
    results.push({ name: workload.name, seconds: median(times) });
    console.error(`  ${workload.name}: ${Math.round(rows / median(times))} entries/s`);
  }
  const ceiling = results[0]?.seconds ?? 1;
  console.log("| workload | entries/s | drain time | vs bare ceiling |");
  console.log("|---|---:|---:|---:|");
  for (const r of results) {
    console.log(
      `| ${r.name} | ${Math.round(rows / r.seconds).toLocaleString("en-US")} | ${r.seconds.toFixed(2)} s | ${((ceiling / r.seconds) * 100).toFixed(0)}% |`,
    );
  }
  await client.close();
}

console.log(machine());
for (const server of benchServers()) await drainBench(server);
