// Drain-rate benchmark on the MongoDB-wire server of scripts/services.sh (FerretDB 1.24 on
// SQLite): a pre-filled outbox drained through the store (claim + ack loop), for three key
// shapes, next to a bare ceiling measured in the same run: the same documents drained with a
// raw find + updateMany loop (no keys, leases, tickets or fencing).
//
//   pnpm --filter @outbox/store-mongodb bench
//
// Environment: OUTBOX_MONGODB_URL, OUTBOX_BENCH_ROWS (default 300: FerretDB drains ~80 entries/s), OUTBOX_BENCH_BATCH
// (default 100), OUTBOX_BENCH_PAYLOAD (bytes, default 1024), OUTBOX_BENCH_RUNS (default 3: median).
import { execFileSync } from "node:child_process";
import { cpus, totalmem } from "node:os";
import { createMongoStore, type MongoStore } from "@outbox/store-mongodb";
import { MongoClient } from "mongodb";

const url = process.env.OUTBOX_MONGODB_URL ?? "mongodb://127.0.0.1:27017";
const rows = Number(process.env.OUTBOX_BENCH_ROWS ?? 300);
const batch = Number(process.env.OUTBOX_BENCH_BATCH ?? 100);
const payloadBytes = Number(process.env.OUTBOX_BENCH_PAYLOAD ?? 1024);
const runs = Number(process.env.OUTBOX_BENCH_RUNS ?? 3);
const payload = new Uint8Array(payloadBytes).map((_, i) => (i * 31 + 7) % 256);

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)] as number;

function cpuModel(): string {
  try {
    return /Model name:\s*(.+)/.exec(execFileSync("lscpu", { encoding: "utf8" }))?.[1]?.trim() ?? "unknown";
  } catch {
    return cpus()[0]?.model ?? "unknown";
  }
}

const client = new MongoClient(url, { appName: "outbox-bench" });
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

const hello = await client.db("admin").command({ buildInfo: 1 });
console.log(
  `Machine: ${cpuModel()}, ${cpus().length} cores, ${Math.round(totalmem() / 2 ** 30)} GiB; Node ${process.version}`,
);
console.log(
  `Server: ${hello.ferretdbVersion ? `FerretDB ${hello.ferretdbVersion === "unknown" ? "1.24.2 (embedded)" : hello.ferretdbVersion}` : `MongoDB ${hello.version}`}; draining ${rows} entries of ${payloadBytes} bytes, batch ${batch}, median of ${runs}\n`,
);
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
