import { existsSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

/**
 * Connection settings of the real servers that scripts/services.sh starts. Values already in
 * the environment win, so a developer can point the suite at other servers.
 */
function serviceEnv(): Record<string, string> {
  const file = fileURLToPath(new URL("./scripts/services.env", import.meta.url));
  if (!existsSync(file)) return {};
  const env: Record<string, string> = {};
  for (const line of readFileSync(file, "utf8").split("\n")) {
    const match = /^([A-Z0-9_]+)=(.*)$/.exec(line.trim());
    if (match?.[1] && match[2] !== undefined && process.env[match[1]] === undefined) env[match[1]] = match[2];
  }
  return env;
}

// Tests read each workspace package's TypeScript source (the "@outbox/source" export
// condition), so a test run never depends on a stale build.
const conditions = ["@outbox/source", "import", "node", "default"];
// vitest forwards ssr.resolve.conditions to Node as --conditions for externalised modules; an
// "import" condition there makes Node's require() pick the ESM build of dual packages (pg
// requires pg-pool and gets a module namespace). Keep only what Node itself lacks.
const ssrConditions = ["@outbox/source", "node", "development|production"];

export function packageTestConfig(options: { testTimeout?: number } = {}) {
  return defineConfig({
    resolve: { conditions },
    ssr: { resolve: { conditions: ssrConditions, externalConditions: ["@outbox/source"] } },
    test: {
      include: ["test/**/*.test.ts"],
      env: serviceEnv(),
      testTimeout: options.testTimeout ?? 20_000,
      hookTimeout: 60_000,
      fileParallelism: false,
      // The JSON report feeds scripts/test-summary.mjs, which prints one total line for CI.
      reporters: ["default", ["json", { outputFile: ".vitest-results.json" }]],
    },
  });
}
