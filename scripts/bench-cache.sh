#!/usr/bin/env bash
# The answer cache end to end through the HTTP API: an L1 hit, an L2 hit (Redis on
# loopback; a second gateway whose memory tier holds nothing), and the same request
# as a miss (`Cache-Control: no-cache`: upstream, then stored in both tiers) and as a
# bypass (no cache stage), against an upstream that answers instantly (nginx). wrk at
# 1 connection for latency and at 64 for throughput. Prints a Markdown table.
#
#   scripts/bench-cache.sh            (DURATION=10s by default)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
UPSTREAM_PORT=${UPSTREAM_PORT:-18091}
L1_PORT=${L1_PORT:-18092}
L2_PORT=${L2_PORT:-18093}

source scripts/lib/bench.sh
need wrk wrk
need nginx nginx-light
scripts/services.sh >&2

cargo build --release --locked --bin ragway >&2
RAGWAY="$CARGO_TARGET_DIR/release/ragway"

start_instant_upstream "$UPSTREAM_PORT"

prefix="ragway:bench:$$:"
gateway() { # port memory_bytes
  cat >"$work/ragway-$1.toml" <<CONF
[server]
listen = "127.0.0.1:$1"
[log]
level = "warn"
[providers.local-nginx]
kind = "openai"
base_url = "http://127.0.0.1:$UPSTREAM_PORT/v1"
[models.bench]
targets = ["local-nginx:bench"]
[cache]
memory_bytes = $2
redis_url = "redis://127.0.0.1:6379"
redis_key_prefix = "$prefix"
CONF
  "$RAGWAY" serve --config "$work/ragway-$1.toml" 2>"$work/ragway-$1.log" &
  pids+=($!)
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$1/healthz" && return; sleep 0.1; done
  echo "gateway on $1 did not start" >&2
  exit 1
}
gateway "$L1_PORT" 67108864
gateway "$L2_PORT" 0   # no memory tier: every lookup goes to Redis

cached='{"model":"bench","temperature":0,"messages":[{"role":"user","content":"Hello, who are you?"}]}'
warm='{"model":"bench","messages":[{"role":"user","content":"Hello, who are you?"}]}'
status() { # body url [curl args…] → the x-ragway-cache header
  curl -s -D - -o /dev/null -H 'content-type: application/json' "${@:3}" -d "$1" "$2" |
    awk -F': ' 'tolower($1) == "x-ragway-cache" {print $2}' | tr -d '\r'
}
expect() { [ "$1" = "$2" ] || { echo "expected $2, got $1" >&2; exit 1; }; }
# Warm both tiers, and check each path answers as it should.
status "$cached" "http://127.0.0.1:$L1_PORT/v1/chat/completions" >/dev/null
sleep 0.5
expect "$(status "$cached" "http://127.0.0.1:$L1_PORT/v1/chat/completions")" hit-l1
expect "$(status "$cached" "http://127.0.0.1:$L2_PORT/v1/chat/completions")" hit-l2
expect "$(status "$cached" "http://127.0.0.1:$L1_PORT/v1/chat/completions" -H 'cache-control: no-cache')" miss
expect "$(status "$warm" "http://127.0.0.1:$L1_PORT/v1/chat/completions")" bypass

lua() { # name body [cache-control]
  local file="$work/$1.lua"
  {
    echo 'wrk.method = "POST"'
    echo "wrk.body = '$2'"
    echo 'wrk.headers["Content-Type"] = "application/json"'
    if [ -n "${3:-}" ]; then echo "wrk.headers[\"Cache-Control\"] = \"$3\""; fi
  } >"$file"
  echo "$file"
}
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; unit = v; sub(/^[0-9.]+/, "", unit);
    if (unit == "us") n /= 1000; else if (unit == "s") n *= 1000;
    printf "%.3f", n }'
}
measure() { # port lua connections → "rps p50 p99"
  local threads=$(($3 < 2 ? 1 : 2)) out
  out=$(wrk -t"$threads" -c"$3" -d"$DURATION" --latency -s "$2" "http://127.0.0.1:$1/v1/chat/completions")
  if grep -q "Non-2xx" <<<"$out"; then echo "non-2xx responses: $out" >&2; exit 1; fi
  echo "$(awk '/^Requests\/sec:/ {print $2}' <<<"$out") $(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")") $(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")"
}

echo "| request | c=1 p50 ms | c=1 p99 ms | c=1 RPS | c=64 p50 ms | c=64 p99 ms | c=64 RPS |"
echo "|---|---:|---:|---:|---:|---:|---:|"
row() { # label port lua
  read -r r1 a1 b1 < <(measure "$2" "$3" 1)
  read -r r64 a64 b64 < <(measure "$2" "$3" 64)
  printf '| %s | %s | %s | %.0f | %s | %s | %.0f |\n' "$1" "$a1" "$b1" "$r1" "$a64" "$b64" "$r64"
}
row "L1 hit" "$L1_PORT" "$(lua l1 "$cached")"
row "L2 hit (Redis on loopback)" "$L2_PORT" "$(lua l2 "$cached")"
row "miss (no-cache: instant upstream, then stored)" "$L1_PORT" "$(lua miss "$cached" no-cache)"
row "bypass (no cache stage)" "$L1_PORT" "$(lua bypass "$warm")"
# Which tier served, as each gateway counted it.
for port in "$L1_PORT" "$L2_PORT"; do
  echo "gateway :$port lookups: $(curl -s "http://127.0.0.1:$port/metrics" | awk '/^ragway_cache_lookups_total/ {printf "%s=%s ", $1, $2}')"
done
redis-cli -h 127.0.0.1 --scan --pattern "$prefix*" | xargs -r redis-cli -h 127.0.0.1 unlink >/dev/null
