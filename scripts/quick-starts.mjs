// Each package README opens with a `## Quick start` whose ```ts block is a real file, packages/<dir>/quick-start.ts
// (not published: it is not in the package's `files`). This script keeps the two identical and the install line
// complete:
//   node scripts/quick-starts.mjs            check (part of `pnpm lint`): fails when a README block differs from its
//                                            file, or its `npm install` lines miss a package the file imports
//   node scripts/quick-starts.mjs --write    rewrites the README blocks from the files
//   node scripts/quick-starts.mjs --list     for scripts/check-outside.sh: one line per file to run,
//                                            `<name> <file> <database> <broker> <target>` (tab-separated)
//   node scripts/quick-starts.mjs --installs for scripts/check-outside.sh: what the install lines name, one per line
//                                            (`dev <name>` for the `npm install -D` lines)
// scripts/check-outside.sh installs the packed packages outside the workspace, type-checks every file, runs each
// one twice against the real servers and reads its message back from the broker.
import { readFileSync, writeFileSync } from "node:fs";
import { builtinModules } from "node:module";
import { join, resolve } from "node:path";

const root = resolve(new URL("..", import.meta.url).pathname);

/**
 * Every Quick start: the README that shows it, the file it shows, the database it needs (each run of
 * check-outside.sh gets a fresh one) and where its message lands (read back by scripts/quick-start-verify.mjs).
 * The root README shows store-postgres's program.
 */
export const quickStarts = [
  { readme: "README.md", dir: "store-postgres" },
  { readme: "packages/core/README.md", dir: "core", database: "none", broker: "memory", target: "-" },
  { readme: "packages/memory/README.md", dir: "memory", database: "none", broker: "memory", target: "-" },
  { readme: "packages/inbox/README.md", dir: "inbox", database: "none", broker: "memory", target: "-" },
  {
    readme: "packages/store-postgres/README.md",
    dir: "store-postgres",
    database: "postgres",
    broker: "kafka",
    target: "orders.created",
  },
  {
    readme: "packages/store-mysql/README.md",
    dir: "store-mysql",
    database: "mysql",
    broker: "rabbitmq",
    target: "orders.created",
  },
  {
    readme: "packages/store-mongodb/README.md",
    dir: "store-mongodb",
    database: "mongodb",
    broker: "kafka",
    target: "orders.created",
  },
  {
    readme: "packages/publisher-kafka/README.md",
    dir: "publisher-kafka",
    database: "postgres",
    broker: "kafka",
    target: "orders.created",
  },
  {
    readme: "packages/publisher-rabbitmq/README.md",
    dir: "publisher-rabbitmq",
    database: "postgres",
    broker: "rabbitmq",
    target: "orders.created",
  },
  {
    readme: "packages/publisher-pubsub/README.md",
    dir: "publisher-pubsub",
    database: "postgres",
    broker: "pubsub",
    target: "orders.created.billing",
  },
  {
    readme: "packages/publisher-redis/README.md",
    dir: "publisher-redis",
    database: "postgres",
    broker: "redis",
    target: "orders.created",
  },
  {
    readme: "packages/lock-redis/README.md",
    dir: "lock-redis",
    database: "postgres",
    broker: "redis",
    target: "orders.created",
  },
  {
    readme: "packages/lock-etcd/README.md",
    dir: "lock-etcd",
    database: "postgres",
    broker: "kafka",
    target: "orders.created",
  },
  {
    readme: "packages/lock-postgres/README.md",
    dir: "lock-postgres",
    database: "postgres",
    broker: "kafka",
    target: "orders.created",
  },
];

/** Type packages a TypeScript user needs for an import that ships none (the README's `npm install -D` line). */
const typesFor = { pg: "@types/pg" };

const fileOf = (dir) => `packages/${dir}/quick-start.ts`;

/** The `## Quick start` section of a README: its text, where it starts, its first ```ts and ```sh blocks. */
function section(text, readme) {
  const start = text.search(/^## Quick start[ \t]*$/m);
  if (start < 0) throw new Error(`${readme}: no "## Quick start" section`);
  const next = text.slice(start + 1).search(/^## /m);
  const end = next < 0 ? text.length : start + 1 + next;
  const body = text.slice(start, end);
  const ts = /^```ts\n([\s\S]*?)^```$/m.exec(body);
  const sh = /^```sh\n([\s\S]*?)^```$/m.exec(body);
  return { start, end, body, ts, sh };
}

/** The packages named by the `npm install` lines of an sh block: { runtime, dev } (versions stripped). */
function installs(sh) {
  const runtime = [];
  const dev = [];
  for (const line of sh.split("\n")) {
    const command = /^\s*npm (?:install|i)\s+(.*?)\s*(?:#.*)?$/.exec(line);
    if (!command) continue;
    const words = command[1].split(/\s+/).filter(Boolean);
    const isDev = words.some((word) => word === "-D" || word === "--save-dev");
    for (const word of words.filter((w) => !w.startsWith("-"))) (isDev ? dev : runtime).push(word);
  }
  return { runtime, dev };
}

const bare = (spec) => spec.replace(/^(@[^/]+\/[^/@]+|[^/@]+).*$/, "$1");

/** The packages a file imports (bare specifiers, node built-ins left out). */
function imports(code) {
  const found = new Set();
  for (const [, spec] of code.matchAll(/^\s*import\s[^"']*?from\s+["']([^"']+)["']/gm)) {
    if (spec.startsWith(".") || spec.startsWith("node:") || builtinModules.includes(spec)) continue;
    found.add(bare(spec));
  }
  return [...found];
}

const mode = process.argv[2] ?? "--check";
const problems = [];
const lines = [];
const names = new Set();
const readmes = new Map();

for (const quickStart of quickStarts) {
  const readmePath = join(root, quickStart.readme);
  const text = readmes.get(quickStart.readme) ?? readFileSync(readmePath, "utf8");
  const code = readFileSync(join(root, fileOf(quickStart.dir)), "utf8");
  const { start, body, ts, sh } = section(text, quickStart.readme);
  const firstSection = text.search(/^## /m);
  if (firstSection !== start && quickStart.readme !== "README.md") {
    problems.push(`${quickStart.readme}: "## Quick start" must be the first section`);
  }
  if (!ts) {
    problems.push(`${quickStart.readme}: no \`\`\`ts block in "## Quick start"`);
    continue;
  }
  if (ts[1] !== code) {
    if (mode === "--write") {
      const blockStart = start + ts.index + "```ts\n".length;
      readmes.set(quickStart.readme, text.slice(0, blockStart) + code + text.slice(blockStart + ts[1].length));
      console.log(`${quickStart.readme}: Quick start block rewritten from ${fileOf(quickStart.dir)}`);
      continue;
    }
    problems.push(
      `${quickStart.readme}: the Quick start block differs from ${fileOf(quickStart.dir)} (run \`node scripts/quick-starts.mjs --write\`)`,
    );
  }
  readmes.set(quickStart.readme, text);
  if (!sh) {
    problems.push(`${quickStart.readme}: no \`\`\`sh block with the npm install line in "## Quick start"`);
    continue;
  }
  const named = installs(sh[1]);
  const runtime = new Set(named.runtime.map(bare));
  const dev = new Set(named.dev.map(bare));
  for (const name of imports(code)) {
    if (!runtime.has(name))
      problems.push(`${quickStart.readme}: the npm install line lacks ${name} (imported by the Quick start)`);
    const types = typesFor[name];
    if (types && !dev.has(types))
      problems.push(`${quickStart.readme}: no \`npm install -D ${types}\` line (${name} ships no types)`);
  }
  if (!/node quick-start\.ts/.test(body))
    problems.push(`${quickStart.readme}: the Quick start does not say how to run it (\`node quick-start.ts\`)`);
  if (quickStart.outside === false) continue;
  for (const name of named.runtime) names.add(name);
  for (const name of named.dev) names.add(`dev ${name}`);
  if (quickStart.database) {
    lines.push(
      [quickStart.dir, fileOf(quickStart.dir), quickStart.database, quickStart.broker, quickStart.target].join("\t"),
    );
  }
}

if (mode === "--write") {
  for (const [readme, text] of readmes) writeFileSync(join(root, readme), text);
}
if (problems.length > 0) {
  console.error(problems.join("\n"));
  process.exit(1);
}
if (mode === "--list") console.log(lines.join("\n"));
else if (mode === "--installs") console.log([...names].sort().join("\n"));
else if (mode === "--check")
  console.log(`quick starts: ${quickStarts.length} README blocks match their files, install lines complete`);
