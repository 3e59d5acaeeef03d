# rabbitmq: readiness check, start and stop. Sourced by scripts/services.sh (its settings, helpers and
# commands); not run on its own.

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
