#!/usr/bin/env bash
# Makes sure the services the test suite talks to are running on loopback:
# Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 (each installed from
# Debian and started when missing), and Debian's docker-compose and python3-yaml,
# which the suite uses to validate docker-compose.yml and the Kubernetes manifests
# (no Docker engine or cluster is needed for that). The tests reach Postgres as
# postgres://postgres:postgres@127.0.0.1:5432/postgres (RAGWAY_TEST_DATABASE_URL
# overrides it): a fresh install gets that password.
set -euo pipefail

SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"

redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

if ! redis_up; then
    if ! command -v redis-server >/dev/null; then
        echo "services: installing redis-server"
        $SUDO apt-get update -qq && $SUDO apt-get install -y -qq redis-server >/dev/null
    fi
    echo "services: starting redis-server on 127.0.0.1:6379"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
    for _ in $(seq 50); do redis_up && break; sleep 0.1; done
    redis_up || { echo "services: redis did not start" >&2; exit 1; }
fi
echo "services: redis is up"

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

if ! command -v pg_isready >/dev/null || ! pg_up; then
    fresh=no
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
        echo "services: installing postgresql"
        $SUDO apt-get update -qq && $SUDO apt-get install -y -qq postgresql >/dev/null
        fresh=yes
    fi
    if ! pg_up; then
        version=$(ls /etc/postgresql | sort -V | tail -1)
        echo "services: starting postgresql $version on 127.0.0.1:5432"
        $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
        for _ in $(seq 100); do pg_up && break; sleep 0.1; done
    fi
    pg_up || { echo "services: postgresql did not start" >&2; exit 1; }
    if [ "$fresh" = yes ]; then
        $SUDO runuser -u postgres -- psql -q -c "ALTER USER postgres PASSWORD 'postgres'"
    fi
fi
echo "services: postgresql is up"

if ! command -v docker-compose >/dev/null || ! /usr/bin/python3 -c 'import yaml' 2>/dev/null; then
    echo "services: installing docker-compose and python3-yaml (to validate deploy files)"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq docker-compose python3-yaml >/dev/null
fi
