// The chaos run: `bash scripts/run chaos [--long] [--seed N|random] [--stacks a,b]` (servers of
// scripts/services.sh, URLs from scripts/services.env). For each stack, three relays drain what a
// producer writes at a steady rate while seeded faults hit them; an independent consumer records
// what the broker holds, and the checker decides. Prints a summary table, writes a JSON report
// (reports/<short|long>.json, or --out), exits 1 when a stack failed a criterion.
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { parseArgs } from "node:util";
import { type RunConfig, rateOf, runStack, type StackReport } from "./run-stack.js";
import type { FaultKind } from "./schedule.js";
import { type StackId, stackIds } from "./stack.js";
import { loadStack } from "./stacks/load.js";

const { values } = parseArgs({
  options: {
    long: { type: "boolean", default: process.env.CHAOS_LONG === "1" },
    seed: { type: "string", default: process.env.CHAOS_SEED ?? "1" },
    stacks: { type: "string", default: process.env.CHAOS_STACKS ?? stackIds.join(",") },
    out: { type: "string" },
    // Write each stack's raw records next to the report even when it passed.
    records: { type: "boolean", default: false },
    // For trying things out; the short and long configurations are what CI and the README mean.
    seconds: { type: "string" },
    rate: { type: "string" },
    kinds: { type: "string" },
    faults: { type: "string" },
  },
});

const long = values.long === true;
const seed = values.seed === "random" ? Math.floor(Math.random() * 2 ** 31) : Number(values.seed);
if (!Number.isInteger(seed)) throw new Error(`--seed must be an integer or "random", got ${values.seed}`);
const config: RunConfig = {
  name: long ? "long" : "short",
  seed,
  productionMs: values.seconds ? Number(values.seconds) * 1_000 : long ? 330_000 : 75_000,
  faults: values.faults ? Number(values.faults) : long ? 52 : 10,
  rate: values.rate ? Number(values.rate) : 220,
  rateGiven: values.rate !== undefined,
  keys: 1_000,
  relays: 3,
  // The lock's TTL is set (default 10 s): how long a dead leader's lock blocks the others, so the
  // time a leader fault may stall delivery. The lease too (default 30 s): what a relay killed or
  // frozen mid-batch holds waits for it when no newer token takes it over. (Lost claim replies no
  // longer do: the relay gives them back by claimer name.) Everything else is each package's default.
  ttlMs: 3_000,
  leaseMs: 10_000,
  drainMs: long ? 120_000 : 60_000,
  ...(values.kinds ? { kinds: values.kinds.split(",") as FaultKind[] } : {}),
};
const stacks = (values.stacks as string).split(",").map((id) => id.trim()) as StackId[];
const out = resolve(values.out ?? `reports/${config.name}.json`);

const log = (line: string) => console.log(line);
const criteria = [
  "0 lost (every committed entry delivered at least once)",
  "0 per-key order inversions among first deliveries",
  "0 stale fencing tokens accepted (an op with token t starting after an op with a newer token completed)",
  "commit -> first delivery p99 < 15 s",
  `no empty 5 s window during production except within TTL + 5 s after a fault`,
  "no relay process exits on its own",
];

log(`chaos run: ${config.name}, seed ${seed} (repeat with --seed ${seed}${long ? " --long" : ""})`);
log(
  `  production ${config.productionMs / 1_000} s at ${config.rate} entries/s over ${config.keys} keys (half on a tenth of them), ${config.faults} faults per stack, ${config.relays} relays, drain up to ${config.drainMs / 1_000} s`,
);
log(
  `  relay: OutboxRelay defaults (batchSize 32, maxInFlightBatches 2, pollMs 500, retry 10 attempts from 1 s) + leaseMs ${config.leaseMs} (default 30000) + leader { ttlMs ${config.ttlMs} }`,
);
log(`  criteria: ${criteria.join("; ")}`);

const reports: StackReport[] = [];
for (const id of stacks) {
  const stack = await loadStack(id);
  log("");
  log(`== ${stack.title} (${stack.id})`);
  for (const [what, setting] of Object.entries(stack.settings)) log(`  ${what}: ${setting}`);
  if (rateOf(stack, config) !== config.rate) log(`  rate: ${stack.rate?.perSecond}/s: ${stack.rate?.why}`);
  if (stack.purge)
    log(
      `  purge: store.purge({ olderThan: now - ${stack.purge.olderThanMs / 1_000} s }) every ${stack.purge.everyMs / 1_000} s: ${stack.purge.why}`,
    );
  const report = await runStack(stack, config, log);
  log(
    `  faults as injected (seed ${seed}), and how long until everything committed before each one's end was delivered:`,
  );
  for (const fault of report.faults)
    log(
      `    ${String(fault.n).padStart(2)} +${(fault.atMs / 1_000).toFixed(1).padStart(5)}s ${fault.kind.padEnd(15)} ${fault.target.padEnd(11)} ${fault.detail}; caught up ${
        fault.catchUpMs === null ? "never" : `${(fault.catchUpMs / 1_000).toFixed(1)} s`
      } after`,
    );
  const calls = Object.entries(report.relays.storeCalls).map(
    ([op, d]) => `${op} ${d.n}x p50 ${d.p50} ms p99 ${d.p99} ms max ${d.max} ms`,
  );
  log(`  store calls (accepted, fenced): ${calls.join("; ") || "none"}`);
  const pub = report.relays.publishCalls;
  if (pub) log(`  publish calls: ${pub.n}x p50 ${pub.p50} ms p99 ${pub.p99} ms max ${pub.max} ms`);
  for (const failure of report.failures) log(`  FAIL: ${failure}`);
  const result = report.result;
  for (const line of [...(result?.lostSample ?? []), ...(result?.inversionSample ?? [])]) log(`    ${line}`);
  for (const line of result?.staleFenceSample ?? []) log(`    ${line}`);
  if (!report.pass) for (const line of report.relays.errorSample.slice(0, 8)) log(`    relay error: ${line}`);
  const retried = Object.entries(report.relays.retries.causes);
  if (retried.length > 0) {
    const total = retried.reduce((sum, [, count]) => sum + count, 0);
    log(`  retries: ${total} (most attempts of one entry: ${report.relays.retries.mostAttempts}); causes:`);
    for (const [cause, count] of retried.slice(0, 6)) log(`    ${count}x ${cause}`);
  }
  if ((!report.pass || values.records) && report.records) {
    const file = out.replace(/\.json$/, `-${report.stack}-records.json`);
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(
      file,
      JSON.stringify(report.records, (_, value) => (typeof value === "bigint" ? String(value) : value)),
    );
    log(`  raw records (committed, deliveries, fenced store calls): ${file}`);
  }
  reports.push({ ...report, records: undefined });
}

const seconds = (ms: number | undefined) => (ms === undefined || Number.isNaN(ms) ? "-" : (ms / 1_000).toFixed(2));
const rows = reports.map((report) => {
  const r = report.result;
  const catchUps = report.faults.map((fault) => fault.catchUpMs);
  const worst = catchUps.includes(null) ? "never" : seconds(Math.max(0, ...(catchUps as number[])));
  return [
    report.stack,
    String(r?.committed ?? "-"),
    String(r?.lost ?? "-"),
    String(r?.duplicates ?? "-"),
    String(r?.inversions ?? "-"),
    String(r?.staleFences ?? "-"),
    seconds(r?.latency?.p50),
    seconds(r?.latency?.p99),
    seconds(r?.latency?.max),
    r ? `${r.windows.emptyUnexcused}/${r.windows.empty}/${r.windows.total}` : "-",
    String(report.faults.length),
    worst,
    report.pass ? "PASS" : "FAIL",
  ];
});
const header = [
  "stack",
  "committed",
  "lost",
  "dupes",
  "inversions",
  "stale",
  "p50 s",
  "p99 s",
  "max s",
  "empty 5s (bad/all/windows)",
  "faults",
  "max catch-up s",
  "result",
];
const widths = header.map((title, i) => Math.max(title.length, ...rows.map((row) => (row[i] as string).length)));
const line = (cells: string[]) => cells.map((cell, i) => cell.padEnd(widths[i] as number)).join("  ");
log("");
log(`chaos ${config.name}, seed ${seed}:`);
log(line(header));
for (const row of rows) log(line(row));

mkdirSync(dirname(out), { recursive: true });
writeFileSync(
  out,
  `${JSON.stringify(
    { config, criteria, finishedAt: new Date().toISOString(), pass: reports.every((r) => r.pass), stacks: reports },
    (_, value) => (typeof value === "bigint" ? String(value) : value),
    2,
  )}\n`,
);
log(`report: ${out}`);
const failed = reports.filter((report) => !report.pass).map((report) => report.stack);
log(failed.length === 0 ? "chaos: PASS" : `chaos: FAIL (${failed.join(", ")})`);
process.exit(failed.length === 0 ? 0 : 1);
