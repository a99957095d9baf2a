#!/usr/bin/env bash
# The streamed-answer tail at one connection: sequential streamed requests through
# ragway and directly to an instant upstream (nginx, canned answer), each request
# written in one write (TCP_NODELAY) and in two (head, then body, Nagle on — how
# many clients send them). Prints p50/p99/max and how many took over 20 ms.
#
#   scripts/bench-stream-tail.sh            (N=3000 requests per run by default)
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-3000}
UPSTREAM_PORT=${UPSTREAM_PORT:-18081}
GATEWAY_PORT=${GATEWAY_PORT:-18080}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ragway/target}

source scripts/lib/bench.sh
need nginx nginx-light
cargo build --release --locked --bin ragway >&2
start_instant_upstream "$UPSTREAM_PORT"
cat >"$work/ragway.toml" <<CONF
[server]
listen = "127.0.0.1:$GATEWAY_PORT"
[providers.local-nginx]
kind = "openai"
base_url = "http://127.0.0.1:$UPSTREAM_PORT/v1"
[models.bench]
targets = ["local-nginx:bench"]
CONF
"$CARGO_TARGET_DIR/release/ragway" serve --config "$work/ragway.toml" 2>"$work/ragway.log" &
pids+=($!)
for _ in $(seq 100); do
  curl -sf -o /dev/null "http://127.0.0.1:$GATEWAY_PORT/healthz" && break
  sleep 0.1
done
measure() { python3 scripts/lib/sse_latency.py 127.0.0.1 "$1" bench "$N" ${2:-}; }
echo "| path | request written | latency |"
echo "|---|---|---|"
echo "| direct | one write | $(measure "$UPSTREAM_PORT") |"
echo "| ragway | one write | $(measure "$GATEWAY_PORT") |"
echo "| direct | head, then body | $(measure "$UPSTREAM_PORT" --split) |"
echo "| ragway | head, then body | $(measure "$GATEWAY_PORT" --split) |"
