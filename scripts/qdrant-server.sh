#!/usr/bin/env bash
# Starts a Qdrant server on loopback for the Qdrant server backend's tests, when a
# server binary has been placed in the cache beside the build output
# ($RAGWAY_QDRANT_BIN, by default ~/.cache/ragway/qdrant/qdrant-v1.16.3: the
# release docker-compose.yml pins). Prints the server's gRPC URL on stdout for
# QDRANT_URL; prints nothing, with a notice on stderr, when there is no binary (the
# tests that need a server are then skipped). A QDRANT_URL already set is kept.
# The server keeps its data under ~/.cache/ragway/qdrant/storage, listens on
# 127.0.0.1 only (HTTP 16333, gRPC 16334: not the default ports a developer's own
# server may hold), sends no telemetry, and is left running for the next run.
set -euo pipefail

if [ -n "${QDRANT_URL:-}" ]; then
    echo "$QDRANT_URL"
    exit 0
fi

cache=${RAGWAY_QDRANT_DIR:-$HOME/.cache/ragway/qdrant}
bin=${RAGWAY_QDRANT_BIN:-$cache/qdrant-v1.16.3}
http=16333
grpc=16334

ready() { curl -fsS "http://127.0.0.1:$http/readyz" >/dev/null 2>&1; }

if ready; then
    echo "http://127.0.0.1:$grpc"
    exit 0
fi
if [ ! -x "$bin" ]; then
    echo "qdrant-server: no Qdrant server binary at $bin: the Qdrant server tests are skipped" >&2
    exit 0
fi

mkdir -p "$cache/storage" "$cache/snapshots"
cd "$cache"
QDRANT__SERVICE__HOST=127.0.0.1 \
QDRANT__SERVICE__HTTP_PORT=$http \
QDRANT__SERVICE__GRPC_PORT=$grpc \
QDRANT__STORAGE__STORAGE_PATH="$cache/storage" \
QDRANT__STORAGE__SNAPSHOTS_PATH="$cache/snapshots" \
QDRANT__TELEMETRY_DISABLED=true \
QDRANT__LOG_LEVEL=WARN \
QDRANT__SERVICE__ENABLE_STATIC_CONTENT=false \
    nohup "$bin" >"$cache/qdrant.log" 2>&1 &

for _ in $(seq 1 100); do
    if ready; then
        echo "qdrant-server: $("$bin" --version 2>/dev/null || echo qdrant) on 127.0.0.1:$grpc" >&2
        echo "http://127.0.0.1:$grpc"
        exit 0
    fi
    sleep 0.2
done
echo "qdrant-server: the server at $bin did not become ready in 20 s (see $cache/qdrant.log): the Qdrant server tests are skipped" >&2
exit 0
