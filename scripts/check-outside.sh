#!/usr/bin/env bash
# The path a stranger takes, tested, outside the pnpm workspace and from packed tarballs:
# 1. pack the packages as they would be published and check their package.json;
# 2. outside/third-party-adapter (a node:sqlite store): npm-install @outbox/core and
#    @outbox/conformance from the tarballs (vitest, typescript from the registry), type-check it and
#    run the conformance kit there; require @outbox/core from CommonJS;
# 3. the README's Quick start: extract the block, npm-install what it says, type-check it and run it
#    with `node quick-start.ts` against the real PostgreSQL and Kafka (scripts/services.sh), then
#    check that the entry it enqueued was published.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
source env.sh

work=$(mktemp -d "${TMPDIR:-/tmp}/outbox-outside.XXXXXX")
trap 'rm -rf "$work"' EXIT

if [ -z "${OUTBOX_PG_URL:-}" ] || [ -z "${OUTBOX_KAFKA_BROKERS:-}" ]; then
  set -a; source scripts/services.env; set +a
fi

pnpm exec turbo run build --filter=@outbox/conformance... --filter=@outbox/store-postgres... \
  --filter=@outbox/publisher-kafka... --output-logs=errors-only
mkdir -p "$work/tarballs"
for dir in core conformance store-postgres publisher-kafka; do
  # The pack hook drops scripts and devDependencies from the published package.json.
  (cd "packages/$dir" && npm_config_pnpmfile="$ROOT/scripts/pack-manifest.cjs" pnpm pack --pack-destination "$work/tarballs" >/dev/null)
done

# The published manifests: nothing that points into this repository.
node - "$work"/tarballs/*.tgz <<'NODE'
const { execFileSync } = require("node:child_process");
for (const tarball of process.argv.slice(2)) {
  const manifest = JSON.parse(execFileSync("tar", ["-xzOf", tarball, "package/package.json"], { encoding: "utf8" }));
  const files = execFileSync("tar", ["-tzf", tarball], { encoding: "utf8" }).split("\n");
  const problems = [];
  if (manifest.scripts) problems.push("has scripts");
  if (manifest.devDependencies) problems.push("has devDependencies");
  if (JSON.stringify(manifest).includes("workspace:")) problems.push("has a workspace: range");
  for (const field of ["repository", "homepage", "bugs", "license"]) if (!manifest[field]) problems.push(`no ${field}`);
  if (!files.includes("package/LICENSE")) problems.push("no LICENSE file");
  if (problems.length > 0) {
    console.error(`${manifest.name}: ${problems.join(", ")}`);
    process.exit(1);
  }
  console.log(`${manifest.name}@${manifest.version}: manifest clean (${files.filter(Boolean).length} files)`);
}
NODE

# The Quick start block of README.md, verbatim.
mkdir -p "$work/quick-start"
node - README.md "$work/quick-start/quick-start.ts" <<'NODE'
const { readFileSync, writeFileSync } = require("node:fs");
const [readme, target] = process.argv.slice(2);
const text = readFileSync(readme, "utf8");
const section = text.slice(text.indexOf("## Quick start"), text.indexOf("\n## ", text.indexOf("## Quick start") + 1));
const block = /```ts\n([\s\S]*?)```/.exec(section);
if (!block) throw new Error("README.md: no ts block in the Quick start section");
writeFileSync(target, block[1]);
NODE

cp -r outside/third-party-adapter "$work/app"
cd "$work/app"
npm install --no-audit --no-fund --loglevel=error --save-dev "$work"/tarballs/outbox-core-*.tgz "$work"/tarballs/outbox-conformance-*.tgz
npm run --silent typecheck
npx vitest run --reporter=dot

# CommonJS consumers: require() of the ESM package (no top-level await in its module graph).
cat > require-core.cjs <<'CJS'
const core = require("@outbox/core");
if (typeof core.OutboxRelay !== "function" || typeof core.MemoryStore !== "function") {
  throw new Error("require('@outbox/core') did not return the package's exports");
}
console.log(`require("@outbox/core") from CommonJS works on Node ${process.versions.node}`);
CJS
node require-core.cjs

# The README's Quick start, as a new user runs it.
cd "$work/quick-start"
cat > package.json <<'JSON'
{ "name": "quick-start", "private": true, "type": "module" }
JSON
cat > tsconfig.json <<'JSON'
{
  "compilerOptions": {
    "target": "ES2023", "module": "NodeNext", "moduleResolution": "NodeNext", "strict": true,
    "noEmit": true, "types": ["node"]
  },
  "include": ["quick-start.ts"]
}
JSON
npm install --no-audit --no-fund --loglevel=error "$work"/tarballs/outbox-core-*.tgz \
  "$work"/tarballs/outbox-store-postgres-*.tgz "$work"/tarballs/outbox-publisher-kafka-*.tgz "pg@^8.11" "kafkajs@^2.2.4"
npm install --no-audit --no-fund --loglevel=error -D @types/pg typescript@5.9.3 @types/node@24
npx tsc -p tsconfig.json
database="outbox_quickstart_$(date +%s)_$$"
cat > database.cjs <<'CJS'
// node database.cjs create|check|drop <name>: a fresh database for one run, and the check that
// the Quick start's entry was published (acked only after Kafka confirmed it).
const pg = require("pg");
const [action, name] = process.argv.slice(2);
const url = new URL(process.env.OUTBOX_PG_URL);
(async () => {
  if (action === "check") {
    url.pathname = `/${name}`;
    const client = new pg.Client({ connectionString: url.toString() });
    await client.connect();
    const { rows } = await client.query("SELECT status, topic, key FROM outbox");
    await client.end();
    const ok = rows.length === 1 && rows[0].status === "published" && rows[0].topic === "orders.created";
    if (!ok) throw new Error(`the Quick start did not publish its entry: ${JSON.stringify(rows)}`);
    console.log("Quick start: its entry was published to Kafka before shutdown");
    return;
  }
  const client = new pg.Client({ connectionString: url.toString() });
  await client.connect();
  await client.query(action === "create" ? `CREATE DATABASE "${name}"` : `DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
  await client.end();
})().catch((error) => {
  console.error(error);
  process.exit(1);
});
CJS
node database.cjs create "$database"
trap 'node "$work/quick-start/database.cjs" drop "$database" || true; rm -rf "$work"' EXIT
url="${OUTBOX_PG_URL%/*}/$database"
DATABASE_URL="$url" KAFKA_BROKERS="$OUTBOX_KAFKA_BROKERS" KAFKAJS_NO_PARTITIONER_WARNING=1 \
  timeout 120 node quick-start.ts
node database.cjs check "$database"
