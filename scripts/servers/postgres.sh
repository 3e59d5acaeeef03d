# postgres: readiness check, start and stop. Sourced by scripts/services.sh (its settings, helpers and
# commands); not run on its own.

pg_su() { (cd / && runuser -u postgres -- "$@"); }

ready_postgres() {
  PGPASSWORD=postgres PGCONNECT_TIMEOUT=3 psql -h 127.0.0.1 -p 5432 -U postgres -d outbox_test \
    -XAtqc 'select 1' >/dev/null 2>&1
}

start_postgres() {
  [[ -f $PG_CONF_DIR/postgresql.conf ]] || pg_createcluster "$PG_VERSION" main --port 5432 >/dev/null
  mkdir -p "$PG_CONF_DIR/conf.d"
  # Parallel test workers with their own pools exceed Debian's 100 connections.
  {
    echo "# written by outbox scripts/services.sh"
    echo "listen_addresses = '127.0.0.1'"
    echo "port = 5432"
    echo "max_connections = 300"
    # Log-based capture (@outbox/store-postgres, experimental): logical decoding needs
    # wal_level = logical and a replication slot plus a walsender per capturing relay/test.
    echo "wal_level = logical"
    echo "max_replication_slots = 32"
    echo "max_wal_senders = 32"
    if [[ ${OUTBOX_PG_FAST:-0} == 1 ]]; then
      echo "fsync = off"
      echo "synchronous_commit = off"
      echo "full_page_writes = off"
    else
      echo "fsync = on"
      echo "synchronous_commit = on"
    fi
  } >"$PG_CONF_DIR/conf.d/outbox.conf"
  # /run is often a fresh tmpfs in containers; the socket dir must exist.
  install -d -o postgres -g postgres -m 2775 /var/run/postgresql

  if pg_ctlcluster "$PG_VERSION" main status >/dev/null 2>&1; then
    # Running but not answering our login: someone started it without our setup.
    pg_su psql -XAtq -c 'select pg_reload_conf()' >/dev/null
  else
    require_port_free postgres 5432
    pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" main start ||
      fail postgres "pg_ctlcluster start failed"
  fi
  # max_connections and wal_level only change with a restart.
  if (($(pg_su psql -XAtq -c 'show max_connections') < 200)) ||
    [[ $(pg_su psql -XAtq -c 'show wal_level') != logical ]]; then
    pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" main restart -m fast ||
      fail postgres "pg_ctlcluster restart failed"
  fi
  # TCP logins use scram, so the superuser needs a password.
  pg_su psql -XAtq -c "ALTER USER postgres PASSWORD 'postgres'" >/dev/null
  if [[ $(pg_su psql -XAtq -c "SELECT 1 FROM pg_database WHERE datname = 'outbox_test'") != 1 ]]; then
    pg_su createdb outbox_test
  fi
  wait_ready postgres "$TIMEOUT"
}

stop_postgres() {
  if pg_ctlcluster "$PG_VERSION" main status >/dev/null 2>&1; then
    pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" main stop -m fast
  fi
}
