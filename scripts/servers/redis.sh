# redis: readiness check, start and stop. Sourced by scripts/services.sh (its settings, helpers and
# commands); not run on its own.

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
