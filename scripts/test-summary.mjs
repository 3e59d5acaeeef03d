// Adds up the vitest JSON reports of every package and the chaos run's report, and prints one
// closing line: "tests: N passed, N failed, N skipped; chaos passed". Exits non-zero when a
// report is missing or failed.
// Failed tests are listed just above that line, with the head of their error, because CI keeps
// only the tail of the output.
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

const root = new URL("..", import.meta.url).pathname;
let passed = 0;
let failed = 0;
let skipped = 0;
const missing = [];
const failures = [];
for (const group of ["packages", "examples"]) {
  for (const name of readdirSync(join(root, group))) {
    const dir = join(root, group, name);
    const manifest = join(dir, "package.json");
    if (!existsSync(manifest) || !JSON.parse(readFileSync(manifest, "utf8")).scripts?.test) continue;
    const file = join(dir, ".vitest-results.json");
    if (!existsSync(file)) {
      missing.push(`${group}/${name}`);
      continue;
    }
    const report = JSON.parse(readFileSync(file, "utf8"));
    passed += report.numPassedTests;
    failed += report.numFailedTests;
    skipped += report.numPendingTests + report.numTodoTests;
    if (report.numFailedTestSuites > 0 && report.numFailedTests === 0) failed += report.numFailedTestSuites;
    for (const suite of report.testResults ?? []) {
      const file = suite.name?.slice(root.length) ?? "?";
      const failedTests = (suite.assertionResults ?? []).filter((test) => test.status === "failed");
      for (const test of failedTests)
        failures.push({ where: `${file} > ${test.fullName}`, error: test.failureMessages });
      if (failedTests.length === 0 && suite.status === "failed") failures.push({ where: file, error: [suite.message] });
    }
  }
}
const headOf = (messages) =>
  (messages ?? [])
    .join("\n")
    .split("\n")
    .filter((line) => line.trim() !== "")
    .slice(0, 12)
    .map((line) => `    ${line.slice(0, 300)}`)
    .join("\n");
for (const { where, error } of failures) console.log(`FAILED ${where}\n${headOf(error)}`);
for (const name of missing) console.log(`no test report from ${name}`);
// The chaos run's report (packages/chaos, run after the package tests): one line per stack.
const chaosFile = join(root, "packages", "chaos", "reports", "short.json");
let chaosPassed = false;
if (existsSync(chaosFile)) {
  const chaos = JSON.parse(readFileSync(chaosFile, "utf8"));
  chaosPassed = chaos.pass;
  for (const stack of chaos.stacks) {
    const r = stack.result;
    const figures = r
      ? `${r.committed} committed, ${r.lost} lost, ${r.duplicates} duplicates, ${r.inversions} inversions, ${r.staleFences} stale fences, p99 ${r.latency?.p99 ?? "-"} ms, ${r.windows.emptyUnexcused} empty windows outside faults`
      : "no result";
    console.log(
      `chaos ${stack.stack}: ${stack.pass ? "PASS" : "FAIL"} (${figures})${stack.pass ? "" : `: ${stack.failures.join("; ").slice(0, 300)}`}`,
    );
  }
} else console.log("no chaos report (packages/chaos/reports/short.json)");
console.log(
  `tests: ${passed} passed, ${failed} failed, ${skipped} skipped; chaos ${chaosPassed ? "passed" : "FAILED"}`,
);
process.exit(failed > 0 || missing.length > 0 || passed === 0 || !chaosPassed ? 1 : 0);
