# etcd: readiness check, start and stop. Sourced by scripts/services.sh (its settings, helpers and
# commands); not run on its own.

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
