#!/usr/bin/env bash
# Makes sure the services the test suite talks to are running on loopback:
# Redis on 127.0.0.1:6379 (installed from Debian when missing).
set -euo pipefail

redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

if ! redis_up; then
    if ! command -v redis-server >/dev/null; then
        echo "services: installing redis-server"
        SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
        $SUDO apt-get update -qq && $SUDO apt-get install -y -qq redis-server >/dev/null
    fi
    echo "services: starting redis-server on 127.0.0.1:6379"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
    for _ in $(seq 50); do redis_up && break; sleep 0.1; done
    redis_up || { echo "services: redis did not start" >&2; exit 1; }
fi
echo "services: redis is up"
