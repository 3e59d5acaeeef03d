#!/usr/bin/env bash
# The path a stranger takes, tested, outside the pnpm workspace and from packed tarballs:
# 1. pack the packages as they would be published and check their package.json;
# 2. outside/third-party-adapter (a node:sqlite store): npm-install @outbox/core, @outbox/memory and
#    @outbox/conformance from the tarballs (vitest, typescript from the registry), type-check it and
#    run the conformance kit there; require @outbox/core and @outbox/memory from CommonJS;
# 3. every Quick start (the root README's and each package README's: packages/<dir>/quick-start.ts, which
#    `node scripts/quick-starts.mjs` checks is the README block byte for byte): npm-install what their install lines
#    name (the @outbox packages from the tarballs), type-check them, and run each one as its own process with
#    `node quick-start.ts`, twice (its setup must be idempotent), on a fresh database, against the real servers
#    (scripts/services.sh), under a 20 s timeout; then read its message back from the broker.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
source env.sh

work=$(mktemp -d "${TMPDIR:-/tmp}/outbox-outside.XXXXXX")
trap 'rm -rf "$work"' EXIT

if [ -z "${OUTBOX_PG_URL:-}" ] || [ -z "${OUTBOX_MYSQL_URL:-}" ] || [ -z "${OUTBOX_MONGODB_URL:-}" ] ||
  [ -z "${OUTBOX_KAFKA_BROKERS:-}" ] || [ -z "${OUTBOX_AMQP_URL:-}" ] || [ -z "${OUTBOX_REDIS_URL:-}" ] ||
  [ -z "${OUTBOX_ETCD_HOSTS:-}" ] || [ -z "${OUTBOX_PUBSUB_EMULATOR_HOST:-}" ]; then
  set -a; source scripts/services.env; set +a
fi

# What the Quick starts need: every adapter the install lines name.
adapters=(memory store-postgres store-mysql store-mongodb publisher-kafka publisher-rabbitmq publisher-pubsub
  publisher-redis lock-redis lock-etcd lock-postgres inbox)
node scripts/quick-starts.mjs # README blocks == files, install lines complete
pnpm exec turbo run build --filter=@outbox/conformance... "${adapters[@]/#/--filter=@outbox/}" --output-logs=errors-only
mkdir -p "$work/tarballs"
for dir in core conformance "${adapters[@]}"; do
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
  if (files.includes("package/quick-start.ts")) problems.push("ships quick-start.ts (the README's Quick start, not a module)");
  if (problems.length > 0) {
    console.error(`${manifest.name}: ${problems.join(", ")}`);
    process.exit(1);
  }
  console.log(`${manifest.name}@${manifest.version}: manifest clean (${files.filter(Boolean).length} files)`);
}
NODE

cp -r outside/third-party-adapter "$work/app"
cd "$work/app"
npm install --no-audit --no-fund --loglevel=error --save-dev "$work"/tarballs/outbox-core-*.tgz \
  "$work"/tarballs/outbox-memory-*.tgz "$work"/tarballs/outbox-conformance-*.tgz
npm run --silent typecheck
npx vitest run --reporter=dot

# CommonJS consumers: require() of the ESM packages (no top-level await in their module graphs).
cat > require-core.cjs <<'CJS'
const core = require("@outbox/core");
const memory = require("@outbox/memory");
if (typeof core.OutboxRelay !== "function" || typeof memory.MemoryStore !== "function") {
  throw new Error("require('@outbox/core') or require('@outbox/memory') did not return the package's exports");
}
console.log(`require("@outbox/core") and require("@outbox/memory") from CommonJS work on Node ${process.versions.node}`);
CJS
node require-core.cjs

# The Quick starts, as a new user runs them: one ESM project, what their install lines name.
mkdir -p "$work/quick-start"
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
  "include": ["*/quick-start.ts"]
}
JSON
runtime=()
dev=(typescript@5.9.3 @types/node@24)
while read -r first second; do
  name=${second:-$first}
  case "$name" in
    @outbox/*) name=$(ls "$work"/tarballs/outbox-"${name#@outbox/}"-[0-9]*.tgz) ;;
    # The registry mirror here lacks @google-cloud/pubsub-api 0.7, which 6.3.2 (the latest) needs.
    @google-cloud/pubsub) name=@google-cloud/pubsub@6.3.0 ;;
  esac
  if [ "$first" = dev ]; then dev+=("$name"); else runtime+=("$name"); fi
done < <(cd "$ROOT" && node scripts/quick-starts.mjs --installs)
npm install --no-audit --no-fund --loglevel=error "${runtime[@]}"
npm install --no-audit --no-fund --loglevel=error -D "${dev[@]}"
cp "$ROOT/scripts/quick-start-verify.mjs" .
mapfile -t quick_starts < <(cd "$ROOT" && node scripts/quick-starts.mjs --list)
for line in "${quick_starts[@]}"; do
  IFS=$'\t' read -r name file _ <<<"$line"
  mkdir -p "$name"
  cp "$ROOT/$file" "$name/quick-start.ts"
done
npx tsc -p tsconfig.json

databases=()
cleanup() {
  for database in "${databases[@]}"; do
    node "$work/quick-start/quick-start-verify.mjs" drop ${database} >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
export KAFKA_BROKERS="$OUTBOX_KAFKA_BROKERS" AMQP_URL="$OUTBOX_AMQP_URL" REDIS_URL="$OUTBOX_REDIS_URL" \
  ETCD_HOSTS="$OUTBOX_ETCD_HOSTS" PUBSUB_EMULATOR_HOST="$OUTBOX_PUBSUB_EMULATOR_HOST"
failed=()
for line in "${quick_starts[@]}"; do
  IFS=$'\t' read -r name file database broker target <<<"$line"
  url=
  if [ "$database" != none ]; then
    db_name="outbox_qs_${name//-/_}_$(date +%s)_$$"
    url=$(node quick-start-verify.mjs create "$database" "$db_name")
    databases+=("$database $db_name")
  fi
  for run in 1 2; do
    started=$(date +%s%N)
    status=0
    (cd "$name" && if [ "$database" = mongodb ]; then export MONGODB_URL="$url"; elif [ -n "$url" ]; then export DATABASE_URL="$url"; fi &&
      timeout 20 node quick-start.ts) >"$name/run-$run.log" 2>&1 || status=$?
    took=$(( ($(date +%s%N) - started) / 1000000 ))
    if [ "$status" -ne 0 ]; then
      [ "$status" -eq 124 ] && why="hung (killed after 20 s)" || why="exited with $status"
      echo "Quick start $file, run $run: $why after ${took} ms; its output:" >&2
      sed 's/^/  | /' "$name/run-$run.log" >&2
      failed+=("$name")
      break
    fi
    # A client pointed at the Pub/Sub emulator must never ask Google's metadata server (and say so).
    if grep -q MetadataLookupWarning "$name/run-$run.log"; then
      echo "Quick start $file, run $run: a client looked up Google's metadata server; its output:" >&2
      sed 's/^/  | /' "$name/run-$run.log" >&2
      failed+=("$name")
      break
    fi
    if ! verified=$(node --no-warnings quick-start-verify.mjs read "$broker" "$target" "$name/run-$run.log" 2>&1); then
      echo "Quick start $file, run $run: $verified" >&2
      sed 's/^/  | /' "$name/run-$run.log" >&2
      failed+=("$name")
      break
    fi
    echo "Quick start $file, run $run: exit 0 in ${took} ms; $verified"
  done
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "Quick starts that failed: ${failed[*]}" >&2
  exit 1
fi
