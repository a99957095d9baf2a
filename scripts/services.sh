#!/usr/bin/env bash
# Makes sure the services the test suite talks to are running on loopback:
# Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 (each installed from
# Debian and started when missing), and Debian's docker-compose and python3-yaml,
# which the suite uses to validate docker-compose.yml and the Kubernetes manifests
# (no Docker engine or cluster is needed for that). The tests reach Postgres as
# postgres://postgres:postgres@127.0.0.1:5432/postgres (RAGWAY_TEST_DATABASE_URL
# overrides it): a fresh install gets that password. That Postgres is also given
# TLS, with a certificate from a CA whose certificate is left in
# ~/.cache/ragway/tls/ca.pem for the tests (RAGWAY_TEST_TLS_DIR moves it).
set -euo pipefail

SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"

redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

if ! redis_up; then
    if ! command -v redis-server >/dev/null; then
        echo "services: installing redis-server"
        $SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq && $SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq redis-server >/dev/null
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
        $SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq && $SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq postgresql >/dev/null
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

# openssl makes the certificates: here for Postgres, in the tests for their own
# TLS-only redis-server.
if ! command -v openssl >/dev/null; then
    echo "services: installing openssl"
    $SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq && $SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq openssl >/dev/null
fi

# TLS on that Postgres, so the suite can try every sslmode against a real server:
# a CA made here (its certificate kept where the tests read it, its key thrown
# away) and a server certificate for 127.0.0.1 and localhost in the server's data
# directory. Done once; redone when the server no longer proves itself with that CA.
tls_dir="${RAGWAY_TEST_TLS_DIR:-$HOME/.cache/ragway/tls}"
pg() { PGPASSWORD=postgres psql -X -q -t -A "host=127.0.0.1 port=5432 user=postgres dbname=postgres $1" -c "$2"; }
pg_tls_ok() {
    [ -s "$tls_dir/ca.pem" ] &&
        pg "sslmode=verify-full sslrootcert=$tls_dir/ca.pem" "SELECT 1" >/dev/null 2>&1
}
pg_tls_setup() {
    local data owner work
    data=$(pg "sslmode=disable" "SHOW data_directory") || return 1
    $SUDO test -d "$data" || { echo "services: $data is not on this machine" >&2; return 1; }
    owner=$($SUDO stat -c %U "$data")
    work=$(mktemp -d)
    (
        cd "$work"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
            -keyout ca.key -out ca.pem -subj "/CN=ragway test CA" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign"
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -keyout server.key -out server.csr -subj "/CN=localhost"
        printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=CA:FALSE" \
            "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
            -extfile server.ext -out server.crt
    ) >/dev/null 2>&1 || { rm -rf "$work"; return 1; }
    $SUDO install -o "$owner" -g "$owner" -m 0600 "$work/server.key" "$data/ragway-server.key"
    $SUDO install -o "$owner" -g "$owner" -m 0644 "$work/server.crt" "$data/ragway-server.crt"
    mkdir -p "$tls_dir" && install -m 0644 "$work/ca.pem" "$tls_dir/ca.pem"
    rm -rf "$work"
    # ALTER SYSTEM lands in postgresql.auto.conf, over the packaged postgresql.conf.
    pg "sslmode=disable" "ALTER SYSTEM SET ssl_cert_file = '$data/ragway-server.crt'" &&
        pg "sslmode=disable" "ALTER SYSTEM SET ssl_key_file = '$data/ragway-server.key'" &&
        pg "sslmode=disable" "ALTER SYSTEM SET ssl = on" &&
        pg "sslmode=disable" "SELECT pg_reload_conf()" >/dev/null || return 1
    for _ in $(seq 50); do pg_tls_ok && return 0; sleep 0.1; done
    return 1
}
if pg_tls_ok; then
    echo "services: postgresql serves TLS (CA: $tls_dir/ca.pem)"
elif pg_tls_setup; then
    echo "services: postgresql now serves TLS (CA: $tls_dir/ca.pem)"
else
    # Not fatal here: the rest of the suite runs; its TLS tests fail and say why.
    echo "services: could not set up TLS on postgresql; its TLS tests will fail" >&2
fi

if ! command -v docker-compose >/dev/null || ! /usr/bin/python3 -c 'import yaml' 2>/dev/null; then
    echo "services: installing docker-compose and python3-yaml (to validate deploy files)"
    $SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq && $SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq docker-compose python3-yaml >/dev/null
fi
