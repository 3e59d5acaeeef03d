# mongo-java: readiness check, start and stop. Sourced by scripts/services.sh (its settings, helpers and
# commands); not run on its own.

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
