#!/usr/bin/env bash
# A RabbitMQ broker on 127.0.0.1:5672 (guest/guest) for the AMQP tests and bench (tests/amqp.rs,
# benches/amqp.rs). This project's machines start one before a session; if none listens, this
# installs rabbitmq-server from Debian's packages, starts it bound to 127.0.0.1 and waits for it.
set -euo pipefail

listening() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

if listening; then
    echo "rabbitmq: a broker listens on 127.0.0.1:5672"
    exit 0
fi
if [ ! -x /usr/sbin/rabbitmq-server ]; then
    echo "rabbitmq: installing rabbitmq-server (Debian)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # The package's own start may fail without an init system; the broker is started below.
    apt-get install -y -qq -o Dpkg::Options::=--force-confold rabbitmq-server || true
    [ -x /usr/sbin/rabbitmq-server ] || { echo "rabbitmq: install failed" >&2; exit 1; }
fi
if listening; then
    echo "rabbitmq: the package started a broker on 127.0.0.1:5672"
    exit 0
fi
pidfile=/tmp/wharf-ci-rabbitmq.pid
rm -f "$pidfile"
echo "rabbitmq: starting the broker bound to 127.0.0.1"
RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_PID_FILE="$pidfile" rabbitmq-server -detached
# `rabbitmqctl wait` returns once the pid file is there and the node has booted its apps.
rabbitmqctl wait --timeout 120 "$pidfile"
for _ in $(seq 1 60); do
    listening && { echo "rabbitmq: up on 127.0.0.1:5672"; exit 0; }
    sleep 1
done
echo "rabbitmq: no broker on 127.0.0.1:5672 after starting one" >&2
exit 1
