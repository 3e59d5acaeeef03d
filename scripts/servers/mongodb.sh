# mongodb: readiness check, start and stop. Sourced by scripts/services.sh (its settings, helpers and
# commands); not run on its own.

# No mongod is packaged in the reachable registries. FerretDB 1.24 (MongoDB wire protocol;
# no transactions, no change streams) is embedded by scripts/ferretdb/main.go on its PostgreSQL
# backend, and built with the machine's Go into the cache, rebuilt only when main.go, go.mod,
# go.sum or the build tags change (`.complete` holds their hash). The build runs on a copy in the
# cache: nothing is written into the repo. Not its SQLite backend: that one serialises every
# writer on one database file (SQLITE_BUSY under concurrent relays).
FERRETDB_TAGS=ferretdb_no_sqlite # only the PostgreSQL backend is linked in
mongodb_build() {
  local dir=$CACHE/ferretdb-$FERRETDB_VERSION want go
  want=$({ cat "$SCRIPT_DIR/ferretdb/main.go" "$SCRIPT_DIR/ferretdb/go.mod" "$SCRIPT_DIR/ferretdb/go.sum"; echo "$FERRETDB_TAGS"; } |
    sha256sum | cut -d' ' -f1)
  [[ -x $FERRETDB_BIN && $(cat "$dir/.complete" 2>/dev/null) == "$want" ]] && return 0
  go=$(command -v go || command -v /usr/local/go/bin/go) ||
    fail mongodb "no Go toolchain (go >= 1.24 on PATH or in /usr/local/go) to build FerretDB"
  log "mongodb: building FerretDB v$FERRETDB_VERSION from the Go module proxy into ${dir} (once, 1-2 min)"
  local tmp=$dir.tmp.$$
  rm -rf "$tmp"
  mkdir -p "$tmp/src"
  cp "$SCRIPT_DIR/ferretdb/main.go" "$SCRIPT_DIR/ferretdb/go.mod" "$SCRIPT_DIR/ferretdb/go.sum" "$tmp/src/"
  (cd "$tmp/src" && GOFLAGS="-mod=mod -buildvcs=false" "$go" build -trimpath -tags "$FERRETDB_TAGS" \
    -o "$tmp/ferretdb-outbox" .) >"$STATE/mongodb-build.log" 2>&1 ||
    { rm -rf "$tmp"; fail mongodb "go build of scripts/ferretdb failed"; }
  rm -rf "$tmp/src"
  echo "$want" >"$tmp/.complete"
  rm -rf "$dir"
  mv "$tmp" "$dir"
}

# A real command ({ping: 1} as an OP_MSG, reply must say ok: 1), sent by the same binary.
# FerretDB answers ping only after reaching PostgreSQL.
ready_mongodb() { [[ -x $FERRETDB_BIN ]] && "$FERRETDB_BIN" -listen "${ADDR[mongodb]}" -probe >/dev/null 2>&1; }

start_mongodb() {
  rm -f "$STATE/mongodb-build.log" # only show it on failure if this start ran the build
  mongodb_build
  require_port_free mongodb 27017
  : >"$STATE/mongodb.log"
  # FerretDB keeps its data in PostgreSQL: cmd_start starts postgres along with mongodb (in
  # parallel, while this one builds), so wait for it here.
  local deadline=$((SECONDS + TIMEOUT))
  until ready_postgres; do
    ((SECONDS < deadline)) ||
      fail mongodb "PostgreSQL (${ADDR[postgres]}) not ready after ${TIMEOUT}s: FerretDB keeps its data there"
    sleep 0.25
  done
  # Fresh data per start (tests own every collection): its database is dropped and created
  # again. `restart mongodb --keep-data` keeps it, so a test can restart the server without
  # losing what it wrote.
  if [[ -z ${OUTBOX_KEEP_DATA:-} ]]; then
    pg_su psql -XAtq -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS $FERRETDB_PG_DB WITH (FORCE)" \
      >>"$STATE/mongodb.log" 2>&1 || fail mongodb "could not drop the $FERRETDB_PG_DB database"
  fi
  if [[ $(pg_su psql -XAtq -c "SELECT 1 FROM pg_database WHERE datname = '$FERRETDB_PG_DB'") != 1 ]]; then
    pg_su createdb "$FERRETDB_PG_DB" >>"$STATE/mongodb.log" 2>&1 ||
      fail mongodb "could not create the $FERRETDB_PG_DB database"
  fi
  # FerretDB 1.x answers every query with a sequential scan of the collection's table (its filters
  # are jsonb containment, which no btree index serves). Each ~2.5 KB document is compressed in
  # its row: lz4 decompresses it about 2.5x faster than the default pglz (measured: 10k rows, 10 vs
  # 26 ms). Parallel workers only add start-up cost to its many small scans on 2 cores. Both apply
  # to this database only, from FerretDB's next connection on.
  pg_su psql -XAtq -v ON_ERROR_STOP=1 \
    -c "ALTER DATABASE $FERRETDB_PG_DB SET default_toast_compression = 'lz4'" \
    -c "ALTER DATABASE $FERRETDB_PG_DB SET max_parallel_workers_per_gather = 0" >>"$STATE/mongodb.log" 2>&1 ||
    fail mongodb "could not configure the $FERRETDB_PG_DB database"
  spawn mongodb "$STATE/mongodb.log" "$FERRETDB_BIN" -listen "${ADDR[mongodb]}" -postgresql-url "$FERRETDB_PG_URL"
  wait_ready mongodb "$TIMEOUT" "$(cat "$STATE/mongodb.pid")"
}

stop_mongodb() { stop_pid mongodb 10; }
