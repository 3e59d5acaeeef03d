# pubsub: readiness check, start and stop. Sourced by scripts/services.sh (its settings, helpers and
# commands); not run on its own.

# Google's Pub/Sub fake server, built from the Go module proxy into the cache with the
# machine's Go: scripts/pubsub/main.go serves pstest on a fixed address. Rebuilt only when
# main.go/go.mod/go.sum change (`.complete` holds their hash). The build runs on a copy in
# the cache: nothing is written into the repo. In memory: a restart forgets every topic.
pubsub_build() {
  local dir=$CACHE/pubsub-$PUBSUB_VERSION want go
  want=$(cat "$SCRIPT_DIR/pubsub/main.go" "$SCRIPT_DIR/pubsub/go.mod" "$SCRIPT_DIR/pubsub/go.sum" | sha256sum | cut -d' ' -f1)
  [[ -x $PUBSUB_BIN && $(cat "$dir/.complete" 2>/dev/null) == "$want" ]] && return 0
  go=$(command -v go || command -v /usr/local/go/bin/go) ||
    fail pubsub "no Go toolchain (go >= 1.26 on PATH or in /usr/local/go) to build the Pub/Sub fake"
  log "pubsub: building pstest v$PUBSUB_VERSION from the Go module proxy into ${dir} (once, 1-3 min)"
  local tmp=$dir.tmp.$$
  rm -rf "$tmp"
  mkdir -p "$tmp/src"
  cp "$SCRIPT_DIR/pubsub/main.go" "$SCRIPT_DIR/pubsub/go.mod" "$SCRIPT_DIR/pubsub/go.sum" "$tmp/src/"
  (cd "$tmp/src" && GOFLAGS="-mod=mod -buildvcs=false" "$go" build -trimpath -o "$tmp/pstest-server" .) \
    >"$STATE/pubsub-build.log" 2>&1 || { rm -rf "$tmp"; fail pubsub "go build of scripts/pubsub failed"; }
  rm -rf "$tmp/src"
  echo "$want" >"$tmp/.complete"
  rm -rf "$dir"
  mv "$tmp" "$dir"
}

# A real RPC (Publisher.ListTopics) answered by the server, made by the same binary.
ready_pubsub() { [[ -x $PUBSUB_BIN ]] && "$PUBSUB_BIN" -addr "${ADDR[pubsub]}" -probe >/dev/null 2>&1; }

start_pubsub() {
  rm -f "$STATE/pubsub-build.log" # only show it on failure if this start ran the build
  pubsub_build
  require_port_free pubsub 8085
  : >"$STATE/pubsub.log"
  spawn pubsub "$STATE/pubsub.log" "$PUBSUB_BIN" -addr "${ADDR[pubsub]}"
  wait_ready pubsub "$TIMEOUT" "$(cat "$STATE/pubsub.pid")"
}

stop_pubsub() { stop_pid pubsub 10; }
