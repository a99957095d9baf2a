# Shared by the benchmark scripts (sourced, not run): tools, a work directory whose
# processes stop on exit, and an upstream that answers instantly.

# Ports and the build directory, unless the script or its caller chose others.
UPSTREAM_PORT=${UPSTREAM_PORT:-18081}
GATEWAY_PORT=${GATEWAY_PORT:-18080}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ragway/target}

need() { # command package: installs the Debian package when the command is missing
  command -v "$1" >/dev/null 2>&1 && return
  apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null && apt-get -o DPkg::Lock::Timeout=300 install -y -qq "$2" >/dev/null
}

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# nginx on 127.0.0.1:PORT answering every request with a canned streamed chat answer
# (three chunks, usage, [DONE]): ragway streams from upstream by default, also for
# clients that want a whole answer, and assembles it.
start_instant_upstream() { # port
  local chunk answer
  chunk() { printf 'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"bench","choices":[%s]%s}\\n\\n' "$1" "$2"; }
  answer="$(chunk '{"index":0,"delta":{"role":"assistant","content":"Hello! "},"finish_reason":null}' '')$(chunk '{"index":0,"delta":{"content":"How can I help you today?"},"finish_reason":null}' '')$(chunk '{"index":0,"delta":{},"finish_reason":"stop"}' '')$(chunk '' ',"usage":{"prompt_tokens":9,"completion_tokens":9,"total_tokens":18}')data: [DONE]\\n\\n"
  mkdir -p "$work/nginx/logs"
  cat >"$work/nginx/nginx.conf" <<CONF
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  client_body_temp_path $work/nginx;
  server {
    listen 127.0.0.1:$1;
    location / { default_type text/event-stream; return 200 '$answer'; }
  }
}
CONF
  nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' &
  pids+=($!)
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0
    sleep 0.05
  done
  echo "the upstream did not start on port $1" >&2
  exit 1
}

# The release build, unless RAGWAY_BIN names a binary (to compare two builds).
build_gateway() {
  [ -n "${RAGWAY_BIN:-}" ] || cargo build --release --locked --bin ragway >&2
}

# The release gateway (or RAGWAY_BIN) on 127.0.0.1:GATEWAY_PORT with one alias, `bench`, routed to
# the instant upstream, plus any further TOML given; sets ragway_pid and returns once
# /healthz answers. GATEWAY_WRAP runs it under a tool (valgrind).
start_gateway() { # gateway-port upstream-port [extra-toml]
  cat >"$work/ragway.toml" <<CONF
[server]
listen = "127.0.0.1:$1"
[providers.local-nginx]
kind = "openai"
base_url = "http://127.0.0.1:$2/v1"
[models.bench]
targets = ["local-nginx:bench"]
${3:-}
CONF
  ${GATEWAY_WRAP:-} "${RAGWAY_BIN:-$CARGO_TARGET_DIR/release/ragway}" serve --config "$work/ragway.toml" 2>"$work/ragway.log" &
  ragway_pid=$!
  pids+=($ragway_pid)
  for _ in $(seq 300); do
    curl -sf -o /dev/null "http://127.0.0.1:$1/healthz" && return 0
    sleep 0.1
  done
  echo "not reachable: http://127.0.0.1:$1/healthz" >&2
  cat "$work/ragway.log" >&2
  exit 1
}

stop_gateway() {
  kill "$ragway_pid" 2>/dev/null || true
  wait "$ragway_pid" 2>/dev/null || true
}

# CPU seconds (user + system) a process has used so far, in clock ticks.
cpu_ticks() { # pid
  awk '{print $14 + $15}' "/proc/$1/stat"
}

# The benchmark configurations: `bare` adds nothing; `pii-audit` writes every call to
# the Postgres audit table (AUDIT_DATABASE, created when missing) and asks with a
# mobile number in the question; `governed` admits every call on a managed key with
# every limit and a budget (its tenant too: ten counters in memory), settled when
# it ends (no prices: an `[audit.prices]` table would turn the audit trail on).
AUDIT_DATABASE=${AUDIT_DATABASE:-postgres://postgres@127.0.0.1:5432/ragway_bench}
config_toml() {
  case $1 in
    bare) ;;
    pii-audit)
      psql "${AUDIT_DATABASE%/*}/postgres" -qc "CREATE DATABASE ${AUDIT_DATABASE##*/}" >/dev/null 2>&1 || true
      printf '[audit]\ndatabase = "%s"\ninstance = "bench"\nspool_dir = "%s"\n' "$AUDIT_DATABASE" "$work/spool"
      ;;
    governed)
      printf '[auth]\nadmin_key_env = "BENCH_ADMIN_KEY"\n[governance]\ndatabase = "sqlite://%s/keys.db"\n' "$work"
      ;;
    traced)
      # The collector: start_otlp_sink (in the caller's shell, before this).
      printf '[tracing]\nendpoint = "http://127.0.0.1:%s"\nsample_ratio = 1.0\n' "$OTLP_PORT"
      ;;
    traced-down)
      # Nothing listens there: every export fails.
      printf '[tracing]\nendpoint = "http://127.0.0.1:%s"\nsample_ratio = 1.0\nexport_timeout = "2s"\n' "$((OTLP_PORT + 1))"
      ;;
    *) echo "unknown configuration: $1" >&2; exit 1 ;;
  esac
}
export BENCH_ADMIN_KEY=${BENCH_ADMIN_KEY:-bench-admin}
OTLP_PORT=${OTLP_PORT:-18317}

# For `traced`: an OTLP/gRPC collector on 127.0.0.1:PORT that takes every export and
# keeps nothing; sets otlp_pid. OTLP_SINK picks it:
# - `nginx` (the default): nginx over HTTP/2, reading each export whole and answering
#   it with an empty message and grpc-status 0, as cheaply as a collector can take
#   one: it stands for a collector on another host; it logs each export's size to
#   $work/otlp/exports.log;
# - `python`: scripts/lib/otlp_sink.py (grpcio, in a venv under
#   ~/.cache/ragway/bench-venv), a collector that shares these cores as one on the
#   same host would.
OTLP_SINK=${OTLP_SINK:-nginx}
start_otlp_sink() { # port
  [ -n "${otlp_pid:-}" ] && return 0
  case $OTLP_SINK in
    nginx)
      mkdir -p "$work/otlp/root"
      printf '\0\0\0\0\0' >"$work/otlp/root/export" # an empty message, uncompressed
      cat >"$work/otlp/nginx.conf" <<CONF
worker_processes 1;
pid $work/otlp/nginx.pid;
error_log $work/otlp/error.log warn;
events { worker_connections 1024; }
http {
  log_format size \$request_length;
  client_body_temp_path $work/otlp;
  upstream answer { server 127.0.0.1:$(($1 + 2)); keepalive 4; }
  server {
    listen 127.0.0.1:$1 http2;
    access_log $work/otlp/exports.log size;
    # Every export is read whole, in memory (a proxied request's body is read before
    # it is passed on; this one is not passed on), then answered with the empty message.
    location / {
      client_max_body_size 0;
      client_body_buffer_size 16m;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header Connection "";
      proxy_http_version 1.1;
      proxy_method GET;
      rewrite ^ /export break;
      proxy_pass http://answer;
      add_trailer grpc-status 0;
    }
  }
  server {
    listen 127.0.0.1:$(($1 + 2));
    access_log off;
    root $work/otlp/root;
    location = /export { default_type application/grpc; }
  }
}
CONF
      nginx -p "$work/otlp" -c "$work/otlp/nginx.conf" -g 'daemon off; master_process off;' \
        >"$work/otlp.log" 2>&1 &
      ;;
    python)
      local venv=$HOME/.cache/ragway/bench-venv
      [ -x "$venv/bin/python" ] || python3 -m venv "$venv" >&2
      "$venv/bin/python" -c 'import grpc' 2>/dev/null || "$venv/bin/pip" install -q grpcio >&2
      "$venv/bin/python" scripts/lib/otlp_sink.py "$1" >"$work/otlp.log" 2>&1 &
      ;;
    *) echo "unknown OTLP_SINK: $OTLP_SINK (nginx or python)" >&2; exit 1 ;;
  esac
  otlp_pid=$!
  pids+=($otlp_pid)
  for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "the OTLP sink did not start: $(cat "$work/otlp.log")" >&2
  exit 1
}

# For `governed`: a managed key of a tenant, both with limits no benchmark reaches
# and a budget; prints the key. Nothing for the other configurations.
bench_key() { # config gateway-port
  [ "$1" = governed ] || return 0
  local limits='{"rpm": 1000000000, "tpm": 1000000000000, "tpd": 1000000000000, "concurrency": 1000000}'
  local budget='{"amount": 1000000000, "period": "month"}'
  curl -sf -X PUT -H "authorization: Bearer $BENCH_ADMIN_KEY" -H 'content-type: application/json' \
    -d "{\"limits\": $limits, \"budget\": $budget}" "http://127.0.0.1:$2/admin/tenants/bench" >/dev/null
  curl -sf -H "authorization: Bearer $BENCH_ADMIN_KEY" -H 'content-type: application/json' \
    -d "{\"tenant\": \"bench\", \"limits\": $limits, \"budget\": $budget}" \
    "http://127.0.0.1:$2/admin/keys" | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])'
}
question() {
  case $1 in
    pii-audit) echo "My number is 13912348765, who are you?" ;;
    *) echo "Hello, who are you?" ;;
  esac
}
body_for() { echo "{\"model\":\"bench\",\"messages\":[{\"role\":\"user\",\"content\":\"$(question "$1")\"}]}"; }
write_post_lua() { # body [bearer key]
  printf 'wrk.method = "POST"\nwrk.body = %s\nwrk.headers["Content-Type"] = "application/json"\n' \
    "'$1'" >"$work/post.lua"
  if [ -n "${2:-}" ]; then printf 'wrk.headers["Authorization"] = "Bearer %s"\n' "$2" >>"$work/post.lua"; fi
}
