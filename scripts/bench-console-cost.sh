#!/usr/bin/env bash
# What an open console costs the API: wrk at concurrency 64 against the release
# gateway (the pii-audit configuration: a mobile number in every question, every
# call written to the Postgres audit table, with an admin key and a key table so
# every console page has something to read), in alternating runs without and with
# a console tab open. The tab is replayed by curl at the pages' own rates, so that
# a browser's rendering does not take CPU from the gateway on the same cores (see
# `console_tab`). Prints a Markdown table per run and the means.
#
#   scripts/bench-console-cost.sh      (DURATION=10s, ROUNDS=3 by default)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}

source scripts/lib/bench.sh
need wrk wrk
need nginx nginx-light
build_gateway
start_instant_upstream "$UPSTREAM_PORT"
extra="$(config_toml pii-audit)
[auth]
admin_key_env = \"BENCH_ADMIN_KEY\"
[governance]
database = \"sqlite://$work/keys.db\""
start_gateway "$GATEWAY_PORT" "$UPSTREAM_PORT" "$extra"
base="http://127.0.0.1:$GATEWAY_PORT"
# A managed key with limits no run reaches: the API's callers use it.
write_post_lua "$(body_for pii-audit)" "$(bench_key governed "$GATEWAY_PORT")"

jar="$work/cookies"
token=$(curl -fsS -c "$jar" "$base/console/sign-in" | sed -n 's/.*name="token" value="\([^"]*\)".*/\1/p' | head -1)
curl -fsS -b "$jar" -c "$jar" -o /dev/null --data-urlencode "key=$BENCH_ADMIN_KEY" --data-urlencode "token=$token" "$base/console/sign-in"
fetch() { curl -fsS -b "$jar" -o /dev/null "$base$1" || echo "console: $1 failed" >&2; }

# Console tabs, until killed: every page's polls at once (the overview's every 2 s,
# the providers page's breakers every 5 s and its 200 audit rows every 30 s), more
# than one tab makes, and a page opened every 10 s with what its script reads.
console_tab() {
  local tick=0 n=0
  local pages=(/console/keys /console/usage /console/audit /console /console/providers)
  local reads=(/console/api/keys "/console/api/usage?group_by=tenant&since=24h" "/console/api/audit?limit=100" "" "")
  while true; do
    ((tick % 2 == 0)) && fetch /console/api/overview
    ((tick % 5 == 0)) && fetch /console/api/breakers
    ((tick % 30 == 0)) && fetch "/console/api/audit?limit=200"
    if ((tick % 10 == 0)); then
      fetch "${pages[n % 5]}"
      fetch /console/assets/console.css
      [ -n "${reads[n % 5]}" ] && fetch "${reads[n % 5]}"
      n=$((n + 1))
    fi
    tick=$((tick + 1))
    sleep 1
  done
}

measure() { # → "rps p50 p99"
  local out
  out=$(wrk -t2 -c64 -d"$DURATION" --latency -s "$work/post.lua" "$base/v1/chat/completions")
  if grep -q "Non-2xx" <<<"$out"; then echo "non-2xx responses: $out" >&2; exit 1; fi
  echo "$(awk '/^Requests\/sec:/ {print $2}' <<<"$out") $(awk '$1 == "50%" {print $2}' <<<"$out") $(awk '$1 == "99%" {print $2}' <<<"$out")"
}

measure >/dev/null # warm-up, and rows for the pages to read
echo "| round | console | RPS | p50 | p99 |"
echo "|---:|---|---:|---:|---:|"
declare -A total=([off]=0 [on]=0)
for round in $(seq 1 "$ROUNDS"); do
  for console in off on; do
    tab=""
    if [ "$console" = on ]; then console_tab & tab=$!; sleep 1; fi
    read -r rps p50 p99 < <(measure)
    [ -n "$tab" ] && { kill "$tab"; wait "$tab" 2>/dev/null || true; }
    echo "| $round | $console | $rps | $p50 | $p99 |"
    total[$console]=$(awk -v a="${total[$console]}" -v b="$rps" 'BEGIN { print a + b }')
  done
done
awk -v off="${total[off]}" -v on="${total[on]}" -v n="$ROUNDS" \
  'BEGIN { printf "\nmean RPS without the console %.0f, with a tab open %.0f (%+.1f %%)\n", off / n, on / n, (on - off) / off * 100 }'
