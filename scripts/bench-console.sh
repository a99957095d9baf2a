#!/usr/bin/env bash
# The console's pages and searches over HTTP against the audit database `make
# bench-audit` leaves (ragway_bench_audit: a million rows and more), on loopback:
# each URL fetched 5 times with curl by a signed-in admin session, printing a
# Markdown table of the median and slowest total times. Uses the test profile's
# `ragway` binary (dependencies optimised; the gateway's own code is not).
#
#   make bench-audit && scripts/bench-console.sh
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/lib/bench.sh
need curl curl
need bc bc
cargo build --locked --bin ragway >&2
RAGWAY="$CARGO_TARGET_DIR/debug/ragway"
port=18096
db=${AUDIT_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/ragway_bench_audit}
cat >"$work/ragway.toml" <<CONF
[server]
listen = "127.0.0.1:$port"
[log]
level = "warn"
[auth]
admin_key_env = "BENCH_ADMIN"
[audit]
database_env = "BENCH_AUDIT_DB"
spool_dir = "$work/spool"
CONF
BENCH_ADMIN=bench-admin BENCH_AUDIT_DB="$db" "$RAGWAY" serve --config "$work/ragway.toml" >"$work/ragway.log" 2>&1 &
pids+=("$!")
for _ in $(seq 1 300); do curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done

jar="$work/cookies"
base="http://127.0.0.1:$port"
token=$(curl -fsS -c "$jar" "$base/console/sign-in" | sed -n 's/.*name="token" value="\([^"]*\)".*/\1/p' | head -1)
curl -fsS -b "$jar" -c "$jar" -o /dev/null --data-urlencode "key=bench-admin" --data-urlencode "token=$token" "$base/console/sign-in"

echo "| GET (admin session) | bytes | p50 ms | max ms |"
echo "|---|---:|---:|---:|"
for path in "/console" "/console/keys" "/console/audit" \
    "/console/api/audit" "/console/api/audit?tenant=tenant-17&since=24h" \
    "/console/api/audit?key=key-123" "/console/api/audit?outcome=error" \
    "/console/api/audit?request_id=req-00654321" "/console/api/audit?limit=1000" \
    "/console/api/audit.csv?limit=1000" "/console/api/overview"; do
  times=()
  for _ in 1 2 3 4 5; do
    read -r code size total < <(curl -sS -b "$jar" -o /dev/null -w '%{http_code} %{size_download} %{time_total}\n' "$base$path")
    [ "$code" = 200 ] || { echo "$path: HTTP $code" >&2; exit 1; }
    times+=("$total")
  done
  sorted=$(printf '%s\n' "${times[@]}" | sort -n)
  p50=$(echo "$sorted" | sed -n 3p); max=$(echo "$sorted" | sed -n 5p)
  printf '| `%s` | %s | %.1f | %.1f |\n' "$path" "$size" "$(echo "$p50 * 1000" | bc -l)" "$(echo "$max * 1000" | bc -l)"
done
