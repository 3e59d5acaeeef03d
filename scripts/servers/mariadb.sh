# mariadb: readiness check, start and stop. Sourced by scripts/services.sh (its settings, helpers and
# commands); not run on its own.

ready_mariadb() {
  mariadb --protocol=tcp -h 127.0.0.1 -P 3306 -u outbox -poutbox --connect-timeout=3 \
    -N -e 'select 1' outbox_test >/dev/null 2>&1
}

mariadb_socket_alive() { mariadb-admin --socket="$MARIADB_SOCKET" -u root ping >/dev/null 2>&1; }

start_mariadb() {
  install -d -o mysql -g mysql /run/mysqld
  if [[ ! -d /var/lib/mysql/mysql ]]; then
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db \
      >"$STATE/mariadb-install.log" 2>&1 || fail mariadb "mariadb-install-db failed"
  fi
  local pid=
  if ! mariadb_socket_alive; then
    require_port_free mariadb 3306
    # mariadbd opens the error log after dropping to the mysql user.
    : >"$STATE/mariadb.log"
    chown mysql:mysql "$STATE/mariadb.log"
    # skip-name-resolve: no reverse DNS per connection (slow/flaky in containers).
    spawn mariadb "$STATE/mariadb.log" /usr/sbin/mariadbd --user=mysql \
      --bind-address=127.0.0.1 --port=3306 --socket="$MARIADB_SOCKET" \
      --skip-name-resolve --max-connections=300 --log-error="$STATE/mariadb.log"
    pid=$(cat "$STATE/mariadb.pid")
    local deadline=$((SECONDS + TIMEOUT))
    until mariadb_socket_alive; do
      proc_running "$pid" || fail mariadb "mariadbd exited during startup"
      ((SECONDS < deadline)) || fail mariadb "socket not alive after ${TIMEOUT}s"
      sleep 0.25
    done
  fi
  # root only logs in over the socket; tests need a TCP user.
  mariadb --socket="$MARIADB_SOCKET" -u root <<'SQL' || fail mariadb "user/database setup failed"
CREATE DATABASE IF NOT EXISTS outbox_test;
CREATE USER IF NOT EXISTS 'outbox'@'127.0.0.1' IDENTIFIED BY 'outbox';
CREATE USER IF NOT EXISTS 'outbox'@'localhost' IDENTIFIED BY 'outbox';
ALTER USER 'outbox'@'127.0.0.1' IDENTIFIED BY 'outbox';
ALTER USER 'outbox'@'localhost' IDENTIFIED BY 'outbox';
GRANT ALL PRIVILEGES ON *.* TO 'outbox'@'127.0.0.1' WITH GRANT OPTION;
GRANT ALL PRIVILEGES ON *.* TO 'outbox'@'localhost' WITH GRANT OPTION;
SQL
  wait_ready mariadb "$TIMEOUT" "$pid"
}

stop_mariadb() {
  if pid_alive mariadb; then
    stop_pid mariadb 60
  elif mariadb_socket_alive; then
    mariadb-admin --socket="$MARIADB_SOCKET" -u root shutdown
  fi
}
