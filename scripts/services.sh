#!/usr/bin/env bash
# Real servers for the integration tests, all on loopback with fixed credentials
# (see scripts/services.env for the URLs the tests read).
#
#   bash scripts/services.sh start   [names...]   # default: all; idempotent, fast when already up
#   bash scripts/services.sh stop    [names...]
#   bash scripts/services.sh restart [names...]   # e.g. `restart kafka` (fresh log dir), `restart redis`
#   bash scripts/services.sh restart kafka --keep-data   # broker restart that keeps its topics
#   bash scripts/services.sh status  [names...]   # exit 1 if any is down
#   bash scripts/services.sh kafka-classpath       # java -cp value for Kafka's CLI classes
#
# names: postgres mariadb redis rabbitmq etcd kafka pubsub mongodb mongo-java
#
# Environment:
#   OUTBOX_STATE            pid files, logs, data dirs   (default /tmp/outbox-services)
#   OUTBOX_CACHE            Kafka jars, Go-built servers, mongo-java-server (default ~/.cache/outbox)
#   OUTBOX_SERVICE_TIMEOUT  readiness timeout in seconds (default 90)
#   OUTBOX_KAFKA_TIMEOUT    same, for Kafka              (default 120)
#   OUTBOX_PG_FAST=1        fsync/synchronous_commit off, applied when postgres (re)starts
#                           (`OUTBOX_PG_FAST=1 bash scripts/services.sh restart postgres`).
#                           Default keeps them ON: benchmark numbers we publish must come
#                           from a durable setup.
#
# Must run as root (Debian packages, pg_ctlcluster, daemons that drop to their own users).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=${OUTBOX_STATE:-/tmp/outbox-services}
CACHE=${OUTBOX_CACHE:-${HOME:-/root}/.cache/outbox}
TIMEOUT=${OUTBOX_SERVICE_TIMEOUT:-90}
KAFKA_TIMEOUT=${OUTBOX_KAFKA_TIMEOUT:-120}

KAFKA_VERSION=3.9.1
KAFKA_LIBS=$CACHE/kafka-$KAFKA_VERSION/libs
# Google's Pub/Sub fake (cloud.google.com/go/pubsub/v2/pstest), pinned in scripts/pubsub/go.mod.
PUBSUB_VERSION=2.9.0
PUBSUB_BIN=$CACHE/pubsub-$PUBSUB_VERSION/pstest-server
# FerretDB (MongoDB wire protocol on PostgreSQL), embedded by scripts/ferretdb/main.go, pinned in its go.mod.
FERRETDB_VERSION=1.24.2
FERRETDB_BIN=$CACHE/ferretdb-$FERRETDB_VERSION/ferretdb-outbox
# Its own database in the postgres server above (a schema per MongoDB database), apart from the
# other tests' outbox_test.
FERRETDB_PG_DB=ferretdb
FERRETDB_PG_URL=postgres://postgres:postgres@127.0.0.1:5432/$FERRETDB_PG_DB
# de.bwaldvogel:mongo-java-server (MongoDB wire protocol, in memory, change streams; no
# transactions), pinned in scripts/mongo-java/pom.xml, started by scripts/mongo-java/MongoJavaServer.java.
MONGO_JAVA_VERSION=1.47.0
MONGO_JAVA_DIR=$CACHE/mongo-java-server-$MONGO_JAVA_VERSION
PG_VERSION=15
PG_CONF_DIR=/etc/postgresql/$PG_VERSION/main
MARIADB_SOCKET=/run/mysqld/mysqld.sock

ALL=(postgres mariadb redis rabbitmq etcd kafka pubsub mongodb mongo-java)

declare -A ADDR=(
  [postgres]=127.0.0.1:5432 [mariadb]=127.0.0.1:3306 [redis]=127.0.0.1:6379
  [rabbitmq]=127.0.0.1:5672 [etcd]=127.0.0.1:2379 [kafka]=127.0.0.1:9092
  [pubsub]=127.0.0.1:8085 [mongodb]=127.0.0.1:27017 [mongo-java]=127.0.0.1:27018
)
# Debian packages each server (and its readiness check / test clients) needs.
declare -A PKGS=(
  [postgres]="postgresql-$PG_VERSION postgresql-client-$PG_VERSION"
  [mariadb]="mariadb-server mariadb-client"
  [redis]="redis-server redis-tools"
  [rabbitmq]="rabbitmq-server"
  [etcd]="etcd-server etcd-client curl"
  [kafka]="openjdk-17-jre-headless maven"
  # Built with the machine's Go (/usr/local/go, >= 1.26 for pstest v2.9.0): Debian 12's golang-go
  # is 1.19, too old, so there is no package to install; start_pubsub fails when Go is missing.
  [pubsub]=""
  # Same for FerretDB (go >= 1.24): start_mongodb fails when Go is missing. Its data lives in
  # PostgreSQL (started along with it), and psql creates its database.
  [mongodb]="postgresql-$PG_VERSION postgresql-client-$PG_VERSION"
  # javac compiles scripts/mongo-java/MongoJavaServer.java; maven fetches the jars.
  [mongo-java]="openjdk-17-jdk-headless maven"
)

# ---------------------------------------------------------------- helpers

log() { printf '[services] %s\n' "$*" >&2; }

# Logs worth showing when a server does not come up.
log_files() {
  case $1 in
    postgres) echo "/var/log/postgresql/postgresql-$PG_VERSION-main.log" ;;
    mariadb) echo "$STATE/mariadb-install.log $STATE/mariadb.log" ;;
    redis) echo "$STATE/redis.log" ;;
    rabbitmq) echo "$STATE/rabbitmq.out /var/log/rabbitmq/rabbit@localhost.log" ;;
    etcd) echo "$STATE/etcd.log" ;;
    kafka) echo "$STATE/kafka-mvn.log $STATE/kafka.log" ;;
    pubsub) echo "$STATE/pubsub-build.log $STATE/pubsub.log" ;;
    mongodb) echo "$STATE/mongodb-build.log $STATE/mongodb.log" ;;
    mongo-java) echo "$STATE/mongo-java-build.log $STATE/mongo-java.log" ;;
  esac
}

# Never a silent skip: say what failed, show the evidence, exit non-zero.
fail() {
  local name=$1 f
  shift
  log "$name: ERROR: $*"
  for f in $(log_files "$name"); do
    [[ -s $f ]] || continue
    printf -- '----- tail -n 40 %s -----\n' "$f" >&2
    tail -n 40 "$f" >&2
  done
  exit 1
}

tcp_open() { (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; }

# A half-dead process or a foreign server on our port would otherwise surface later as a
# confusing "address in use" deep in some log.
require_port_free() {
  local name=$1 port
  shift
  for port in "$@"; do
    if tcp_open "127.0.0.1:$port"; then
      fail "$name" "port $port is already taken, but not by a ready $name: $(ss -ltnpH "sport = :$port" 2>/dev/null || true)"
    fi
  done
}

# A daemon that exited stays a zombie until PID 1 reaps it, which some container inits do
# lazily (seconds); kill -0 alone would count it as alive.
proc_running() {
  local state
  kill -0 "$1" 2>/dev/null || return 1
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $state && $state != Z ]]
}

pid_alive() { [[ -f $STATE/$1.pid ]] && proc_running "$(cat "$STATE/$1.pid")"; }

# Detach fully (own session, stdio to the log) so a CI step or a $(...) caller never waits on
# our pipes, and record the real server pid (exec keeps it) for `stop`.
spawn() {
  local name=$1 logfile=$2
  shift 2
  # A pid file left by a crashed server would pass for the new one's below.
  rm -f "$STATE/$name.pid"
  # shellcheck disable=SC2016 # $$ and $@ belong to the inner shell
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$STATE/$name.pid" "$@" >>"$logfile" 2>&1 </dev/null &
  local i
  for i in $(seq 50); do [[ -s $STATE/$name.pid ]] && return 0; sleep 0.05; done
  fail "$name" "could not spawn $1"
}

# wait_ready NAME TIMEOUT [PID]: poll ready_NAME; give up early if PID dies.
wait_ready() {
  local name=$1 timeout=$2 pid=${3:-} deadline=$((SECONDS + $2))
  until "ready_$name"; do
    if [[ -n $pid ]] && ! proc_running "$pid"; then
      fail "$name" "process $pid exited during startup"
    fi
    if ((SECONDS >= deadline)); then
      # Leave nothing half-started behind: the next `start` would trip over its port.
      [[ -n $pid ]] && stop_pid "$name" 5
      fail "$name" "not ready after ${timeout}s"
    fi
    sleep 0.25
  done
}

# Graceful TERM first (Kafka/MariaDB flush and close cleanly), KILL if it hangs.
stop_pid() {
  local name=$1 grace=${2:-30} pid i
  pid_alive "$name" || { rm -f "$STATE/$name.pid"; return 0; }
  pid=$(cat "$STATE/$name.pid")
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do
    proc_running "$pid" || break
    sleep 0.1
  done
  if proc_running "$pid"; then
    log "$name: pid $pid ignored TERM for ${grace}s, killing"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "$STATE/$name.pid"
}

missing_packages() {
  local pkg
  for pkg in "$@"; do
    [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null) == "install ok installed" ]] || echo "$pkg"
  done
}

install_packages() {
  log "installing Debian packages: $*"
  # Debian postinst scripts start daemons on their default config the moment they are
  # installed; that would grab our ports with the wrong settings.
  if ! grep -qs 'exit 101' /usr/sbin/policy-rc.d; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -q && apt-get install -y -q --no-install-recommends "$@"; } >"$STATE/apt.log" 2>&1; then
    tail -n 40 "$STATE/apt.log" >&2
    log "ERROR: apt-get install failed (full log: $STATE/apt.log)"
    exit 1
  fi
}

# ---------------------------------------------------------------- postgres

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

# ---------------------------------------------------------------- mariadb

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

# ---------------------------------------------------------------- redis

ready_redis() { [[ $(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null) == PONG ]]; }

start_redis() {
  require_port_free redis 6379
  mkdir -p "$STATE/redis"
  # No persistence: tests expect an empty server after `restart redis`.
  # shellcheck disable=SC2094 # redis-server writes its logfile itself, stdio only catches early errors
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no \
    --dir "$STATE/redis" --pidfile "$STATE/redis.pid" --logfile "$STATE/redis.log" \
    </dev/null >>"$STATE/redis.log" 2>&1 || fail redis "redis-server failed"
  wait_ready redis "$TIMEOUT"
}

stop_redis() {
  if pid_alive redis; then
    stop_pid redis 10
  elif ready_redis; then
    redis-cli -h 127.0.0.1 -p 6379 shutdown nosave >/dev/null 2>&1 || true
  fi
}

# ---------------------------------------------------------------- rabbitmq

# Epmd must only listen on loopback; rabbitmqctl reads this too.
export ERL_EPMD_ADDRESS=127.0.0.1

# A real AMQP 0-9-1 protocol header: the broker answers with a Connection.Start frame
# (frame type 1). Far cheaper than `rabbitmqctl` (which boots an Erlang VM, ~1 s).
ready_rabbitmq() {
  (
    exec 3<>/dev/tcp/127.0.0.1/5672
    printf 'AMQP\x00\x00\x09\x01' >&3
    IFS= read -r -t 3 -N 1 byte <&3
    [[ $byte == $'\x01' ]]
  ) 2>/dev/null
}

rabbitmq_node_registered() { epmd -names 2>/dev/null | grep -q '^name rabbit at'; }

start_rabbitmq() {
  # A fixed node name makes rabbitmqctl find the node regardless of the machine's hostname.
  local env_conf='# written by outbox scripts/services.sh
NODENAME=rabbit@localhost
NODE_IP_ADDRESS=127.0.0.1
NODE_PORT=5672
SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"'
  if [[ $(cat /etc/rabbitmq/rabbitmq-env.conf 2>/dev/null) != "$env_conf" ]]; then
    printf '%s\n' "$env_conf" >/etc/rabbitmq/rabbitmq-env.conf
  fi
  # A node that is still booting (e.g. a concurrent `start`) must not be started twice.
  if ! rabbitmq_node_registered; then
    require_port_free rabbitmq 5672
    rabbitmq-server -detached </dev/null >>"$STATE/rabbitmq.out" 2>&1 ||
      fail rabbitmq "rabbitmq-server -detached failed"
  fi
  wait_ready rabbitmq "$TIMEOUT"
}

stop_rabbitmq() {
  if rabbitmq_node_registered; then
    rabbitmqctl -q stop >>"$STATE/rabbitmq.out" 2>&1 || fail rabbitmq "rabbitmqctl stop failed"
  fi
}

# ---------------------------------------------------------------- etcd

ready_etcd() { curl -fsS --max-time 2 http://127.0.0.1:2379/health 2>/dev/null | grep -q '"health":"true"'; }

start_etcd() {
  require_port_free etcd 2379 2380
  # Fresh data per start: tests own all keys, and a stale member dir can refuse to boot.
  # `restart etcd --keep-data` keeps it: a restart on its own data, where revisions and
  # leases survive (etcd then ignores the --initial-cluster* flags).
  [[ -n ${OUTBOX_KEEP_DATA:-} && -d $STATE/etcd-data/member ]] || rm -rf "$STATE/etcd-data"
  : >"$STATE/etcd.log"
  spawn etcd "$STATE/etcd.log" etcd --name default --data-dir "$STATE/etcd-data" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster default=http://127.0.0.1:2380 --initial-cluster-state new \
    --logger zap --unsafe-no-fsync
  wait_ready etcd "$TIMEOUT" "$(cat "$STATE/etcd.pid")"
}

stop_etcd() { stop_pid etcd 10; }

# ---------------------------------------------------------------- kafka

# The broker is assembled from Maven Central jars (the release tarball is not reachable);
# downloaded once into the cache. `.complete` holds the pom's hash: it guards against
# half-finished downloads and refetches when the pom changes.
kafka_fetch() {
  local want
  want=$(sha256sum "$SCRIPT_DIR/kafka/pom.xml" | cut -d' ' -f1)
  [[ $(cat "$KAFKA_LIBS/.complete" 2>/dev/null) == "$want" ]] && return 0
  log "kafka: fetching Kafka $KAFKA_VERSION jars from Maven Central into $KAFKA_LIBS (once)"
  local tmp=$KAFKA_LIBS.tmp.$$
  rm -rf "$tmp"
  mkdir -p "$tmp"
  mvn -B -q -Dstyle.color=never -f "$SCRIPT_DIR/kafka/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$tmp" >"$STATE/kafka-mvn.log" 2>&1 ||
    { rm -rf "$tmp"; fail kafka "mvn dependency:copy-dependencies failed"; }
  # In case mvn leaves target/ next to the pom: nothing may be written into the repo.
  rm -rf "$SCRIPT_DIR/kafka/target"
  echo "$want" >"$tmp/.complete"
  rm -rf "$KAFKA_LIBS"
  mv "$tmp" "$KAFKA_LIBS"
}

ready_kafka() {
  pid_alive kafka && grep -qs 'Kafka Server started' "$STATE/kafka.log" && tcp_open 127.0.0.1:9092
}

start_kafka() {
  rm -f "$STATE/kafka-mvn.log" # only show it on failure if this start ran mvn
  kafka_fetch
  require_port_free kafka 9092 9093
  # Fresh log dir per start: formatting stamps a cluster id, a reused dir would mismatch.
  # `restart kafka --keep-data` keeps it (and skips formatting it again), so a
  # test can restart the broker without losing what was already delivered.
  local keep=""
  [[ -n ${OUTBOX_KEEP_DATA:-} && -f $STATE/kafka-data/meta.properties ]] && keep=1
  [[ -n $keep ]] || rm -rf "$STATE/kafka-data"
  mkdir -p "$STATE/kafka-data"
  sed "s|@LOG_DIR@|$STATE/kafka-data|" "$SCRIPT_DIR/kafka/server.properties.tmpl" >"$STATE/kafka-server.properties"
  : >"$STATE/kafka.log"
  local log4j="-Dlog4j.configuration=file:$SCRIPT_DIR/kafka/log4j.properties"
  # A cluster id is 16 random bytes in URL-safe base64; generating it here saves a JVM start.
  # Like Kafka's own Uuid.randomUuid(), never begin with '-' (CLI parsers take it for a flag).
  local cluster_id=-
  while [[ $cluster_id == -* ]]; do
    cluster_id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
  done
  # Short-lived tool JVM: C1 only and serial GC start noticeably faster.
  [[ -n $keep ]] || java -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
    -Dlog4j.configuration="file:$SCRIPT_DIR/kafka/tools-log4j.properties" -cp "$KAFKA_LIBS/*" \
    kafka.tools.StorageTool format --cluster-id="$cluster_id" -c "$STATE/kafka-server.properties" --ignore-formatted \
    >>"$STATE/kafka.log" 2>&1 || fail kafka "kafka-storage format failed"
  spawn kafka "$STATE/kafka.log" java -Xms256m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -Djava.awt.headless=true "$log4j" -cp "$KAFKA_LIBS/*" kafka.Kafka "$STATE/kafka-server.properties"
  wait_ready kafka "$KAFKA_TIMEOUT" "$(cat "$STATE/kafka.pid")"
}

stop_kafka() { stop_pid kafka 30; }

# ---------------------------------------------------------------- pubsub

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

# ---------------------------------------------------------------- mongodb

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

# ---------------------------------------------------------------- mongo-java

# A second MongoDB-wire server: de.bwaldvogel:mongo-java-server, in memory, with its oplog on,
# so it has change streams (FerretDB 1.x has none); no multi-document transactions. Its jars come
# from Maven Central (like Kafka's) and scripts/mongo-java/MongoJavaServer.java is compiled
# against them, once, into the cache; redone only when the pom or the source change (`.complete`
# holds their hash). Nothing is written into the repo. In memory: a restart forgets everything.
mongo_java_build() {
  local want
  want=$(cat "$SCRIPT_DIR/mongo-java/pom.xml" "$SCRIPT_DIR/mongo-java/MongoJavaServer.java" | sha256sum | cut -d' ' -f1)
  [[ $(cat "$MONGO_JAVA_DIR/.complete" 2>/dev/null) == "$want" ]] && return 0
  log "mongo-java: fetching mongo-java-server $MONGO_JAVA_VERSION from Maven Central into $MONGO_JAVA_DIR (once)"
  local tmp=$MONGO_JAVA_DIR.tmp.$$
  rm -rf "$tmp"
  mkdir -p "$tmp/libs" "$tmp/classes"
  mvn -B -q -Dstyle.color=never -f "$SCRIPT_DIR/mongo-java/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$tmp/libs" >"$STATE/mongo-java-build.log" 2>&1 ||
    { rm -rf "$tmp"; fail mongo-java "mvn dependency:copy-dependencies failed"; }
  rm -rf "$SCRIPT_DIR/mongo-java/target"
  javac -d "$tmp/classes" -cp "$tmp/libs/*" "$SCRIPT_DIR/mongo-java/MongoJavaServer.java" \
    >>"$STATE/mongo-java-build.log" 2>&1 || { rm -rf "$tmp"; fail mongo-java "javac of scripts/mongo-java failed"; }
  echo "$want" >"$tmp/.complete"
  rm -rf "$MONGO_JAVA_DIR"
  mv "$tmp" "$MONGO_JAVA_DIR"
}

mongo_java_cp() { echo "$MONGO_JAVA_DIR/libs/*:$MONGO_JAVA_DIR/classes"; }

# A real command ({ping: 1} as an OP_MSG, reply must say ok: 1), sent by the same class in a
# short-lived JVM (C1 only, serial GC: starts in well under a second).
ready_mongo-java() {
  [[ -f $MONGO_JAVA_DIR/.complete ]] && java -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xmx32m \
    -cp "$(mongo_java_cp)" MongoJavaServer -listen "${ADDR[mongo-java]}" -probe >/dev/null 2>&1
}

start_mongo-java() {
  rm -f "$STATE/mongo-java-build.log" # only show it on failure if this start ran the build
  mongo_java_build
  require_port_free mongo-java 27018
  : >"$STATE/mongo-java.log"
  spawn mongo-java "$STATE/mongo-java.log" java -Xms64m -Xmx1536m -XX:+UseSerialGC -Djava.awt.headless=true \
    -Dorg.slf4j.simpleLogger.defaultLogLevel=warn -cp "$(mongo_java_cp)" MongoJavaServer -listen "${ADDR[mongo-java]}"
  wait_ready mongo-java "$TIMEOUT" "$(cat "$STATE/mongo-java.pid")"
}

stop_mongo-java() { stop_pid mongo-java 10; }

# ---------------------------------------------------------------- commands

# Run "ACTION_name" for each name concurrently; returns the names that failed in FAILED.
declare -A JOBS=()
launch() {
  (
    t0=$SECONDS
    "$1_$2"
    log "$2: $1 done in $((SECONDS - t0))s"
  ) &
  JOBS[$2]=$!
}
reap() {
  local name
  FAILED=()
  for name in "${!JOBS[@]}"; do
    wait "${JOBS[$name]}" || FAILED+=("$name")
  done
  JOBS=()
}

cmd_start() {
  local names=("$@") todo=() later=() pkgs=() name t0=$SECONDS
  # FerretDB keeps its data in PostgreSQL: starting mongodb starts (or checks) postgres too.
  if [[ " ${names[*]} " == *" mongodb "* && " ${names[*]} " != *" postgres "* ]]; then names=(postgres "${names[@]}"); fi
  for name in "${names[@]}"; do
    if "ready_$name"; then log "$name: already running"; else todo+=("$name"); fi
  done

  if ((${#todo[@]})); then
    # Longest first (Kafka: mvn + JVM; RabbitMQ: Erlang boot) so they overlap the rest.
    # Servers whose packages are present start right away, in parallel with apt-get.
    for name in kafka pubsub mongodb mongo-java rabbitmq postgres mariadb redis etcd; do
      [[ " ${todo[*]} " == *" $name "* ]] || continue
      local missing=()
      # shellcheck disable=SC2086 # PKGS values are space-separated lists on purpose
      mapfile -t missing < <(missing_packages ${PKGS[$name]})
      if ((${#missing[@]})); then
        later+=("$name")
        pkgs+=("${missing[@]}")
      else
        log "$name: starting"
        launch start "$name"
      fi
    done
    if ((${#later[@]})); then
      mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sort -u)
      install_packages "${pkgs[@]}"
      for name in "${later[@]}"; do
        log "$name: starting"
        launch start "$name"
      done
    fi
    reap
    log "start of ${todo[*]} finished in $((SECONDS - t0))s${FAILED:+ (FAILED: ${FAILED[*]})}"
  fi

  # Report from a fresh readiness check, not from what we believe happened.
  local rc=0
  for name in "${names[@]}"; do
    if "ready_$name"; then
      echo "$name ready ${ADDR[$name]}"
    else
      echo "$name FAILED ${ADDR[$name]}"
      rc=1
    fi
  done
  return $rc
}

cmd_stop() {
  local name
  for name in "$@"; do launch stop "$name"; done
  reap
  for name in "$@"; do
    if [[ " ${FAILED[*]} " == *" $name "* ]]; then echo "$name stop FAILED"; else echo "$name stopped"; fi
  done
  ((${#FAILED[@]} == 0))
}

cmd_status() {
  local name rc=0
  for name in "$@"; do
    if "ready_$name"; then echo "$name ready ${ADDR[$name]}"; else echo "$name down ${ADDR[$name]}"; rc=1; fi
  done
  return $rc
}

main() {
  # Daemons we start would inherit any extra descriptors our caller left open (CI runners,
  # test harnesses with pipes) and hold them for their whole life; close them up front.
  # 255 is the script itself, which bash is reading.
  local fd
  for fd in "/proc/$$/fd/"*; do
    fd=${fd##*/}
    if [[ $fd =~ ^[0-9]+$ ]] && ((fd > 2 && fd != 255)); then eval "exec $fd>&-"; fi
  done

  local cmd=${1:-}
  shift || true
  local names=() name
  for name in "$@"; do
    if [[ $name == --keep-data ]]; then export OUTBOX_KEEP_DATA=1; else names+=("$name"); fi
  done
  set -- "${names[@]}"
  ((${#names[@]})) || names=("${ALL[@]}")
  for name in "${names[@]}"; do
    [[ -n ${ADDR[$name]:-} ]] || { echo "unknown server '$name' (known: ${ALL[*]})" >&2; exit 2; }
  done
  case $cmd in
    start | stop | restart)
      [[ $EUID -eq 0 ]] || { echo "services.sh $cmd must run as root" >&2; exit 2; }
      mkdir -p "$STATE"
      # Concurrent callers (parallel CI jobs, test workers restarting Kafka) would race for
      # the same ports. flock -o holds the lock itself and does not pass the fd on, so the
      # daemons we start cannot keep it locked after we exit.
      if [[ -z ${OUTBOX_SERVICES_LOCKED:-} ]]; then
        OUTBOX_SERVICES_LOCKED=1 exec flock -o -w 600 "$STATE/.lock" bash "$SCRIPT_DIR/services.sh" "$cmd" "$@"
      fi
      ;;
  esac
  case $cmd in
    start) cmd_start "${names[@]}" ;;
    stop) cmd_stop "${names[@]}" ;;
    restart) cmd_stop "${names[@]}" >/dev/null && cmd_start "${names[@]}" ;;
    status) cmd_status "${names[@]}" ;;
    # For tests that want an independent Kafka client (TopicCommand, ConsoleConsumer, ...).
    kafka-classpath) echo "$KAFKA_LIBS/*" ;;
    *)
      sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//' >&2
      exit 2
      ;;
  esac
}

main "$@"
