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

# ---------------------------------------------------------------- servers
# One file per server: ready_<name>, start_<name>, stop_<name> (and what they need).
for server in "${ALL[@]}"; do
  # shellcheck source=/dev/null
  source "$SCRIPT_DIR/servers/$server.sh"
done

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
