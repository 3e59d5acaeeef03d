# kafka: readiness check, start and stop. Sourced by scripts/services.sh (its settings, helpers and
# commands); not run on its own.

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
