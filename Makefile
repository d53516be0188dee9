# One target directory for everything; components are built for wasm32-wasip2 with the
# size-optimised `component` profile, the host in the default dev profile.
CARGO ?= cargo
WASM_TARGET := wasm32-wasip2
COMPONENT_DIR := $(CURDIR)/target/$(WASM_TARGET)/component
FIXTURES := spin-loop memory-hog panic noop contract call-flood sandbox-escape forbidden-write loud wrong-world unknown-import future-major older-minor
COMPONENT_PACKAGES := -p fulfillment $(foreach f,$(FIXTURES),-p fixture-$(f))

export FULFILLD_COMPONENT_DIR := $(COMPONENT_DIR)

.PHONY: all components thirdparty-client browser-client redis-server-installed test lint fmt bench run demo check-component fuzz fuzz-smoke deploy-check clean

all: lint test

## Build the default component (packed with its manifest) and the test fixtures; prints their paths.
components:
	@command -v rustup >/dev/null && rustup target add $(WASM_TARGET) >/dev/null 2>&1 || true
	$(CARGO) build --profile component --target $(WASM_TARGET) $(COMPONENT_PACKAGES)
	$(CARGO) build --profile component --target $(WASM_TARGET) -p fixture-rules-v2 \
		-p fixture-rules-buggy --target-dir $(CURDIR)/target/rules-v2
	cp $(CURDIR)/target/rules-v2/$(WASM_TARGET)/component/fixture_rules_v2.wasm \
		$(CURDIR)/target/rules-v2/$(WASM_TARGET)/component/fixture_rules_buggy.wasm $(COMPONENT_DIR)/
	$(CARGO) run -q -p fulfilld -- component pack $(COMPONENT_DIR)/fulfillment.wasm \
		--manifest components/fulfillment/component.toml
	@ls -1 $(COMPONENT_DIR)/*.wasm

## The independent Pub/Sub client (Node, pinned in tests/thirdparty/package-lock.json) that the
## third-party sandbox test runs: npm ci when node_modules is missing or older than the lock.
THIRDPARTY := tests/thirdparty
thirdparty-client: $(THIRDPARTY)/node_modules/.package-lock.json

$(THIRDPARTY)/node_modules/.package-lock.json: $(THIRDPARTY)/package.json $(THIRDPARTY)/package-lock.json
	cd $(THIRDPARTY) && npm ci --no-audit --no-fund
	@touch $@

## The console's headless-browser test (puppeteer-core, pinned in tests/browser/package-lock.json;
## it drives the system chromium and downloads no browser): npm ci when node_modules is missing or
## older than the lock.
BROWSER_CLIENT := tests/browser
browser-client: $(BROWSER_CLIENT)/node_modules/.package-lock.json

$(BROWSER_CLIENT)/node_modules/.package-lock.json: $(BROWSER_CLIENT)/package.json $(BROWSER_CLIENT)/package-lock.json
	cd $(BROWSER_CLIENT) && npm ci --no-audit --no-fund
	@touch $@

## Every test: unit, integration (real HTTP on loopback, the built components, the third-party
## client), and the scenario suite through the CLI. tests/with-redis.sh gives the tests a Redis:
## FULFILLD_TEST_REDIS_URL, else the one at 127.0.0.1:6379, else one of its own, stopped afterwards.
test: redis-server-installed components thirdparty-client browser-client
	tests/with-redis.sh $(CARGO) test --workspace
	$(CARGO) run -q -p fulfilld -- test $(COMPONENT_DIR)/fulfillment.wasm tests/scenarios

## Before any build: make test stops at once, saying how to install it, without redis-server.
redis-server-installed:
	@tests/with-redis.sh --check

## Formatting, clippy, the module layering (docs/architecture.md; no cycles) and the promise pages'
## test names (docs/guarantees.md, docs/bad-input.md: each named test exists), exactly as CI runs them.
lint:
	$(CARGO) fmt --all -- --check
	python3 .ci/test_module_cycles.py -q
	python3 .ci/doc_tests.py
	python3 .ci/module-cycles.py --layers docs/architecture.md host/src components/sdk/src components/fulfillment/src
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Benchmarks (release build). Each bench prints the machine's state first and last (commit,
## compiler, CPUs, load average, component size); the whole run, the pubsub bench BENCH_RUNS
## times, is kept in target/bench/run-<UTC time>.txt. docs/benchmarks.md quotes one such run.
## BENCH_TARGET_DIR keeps the release build apart from the dev one, so a test run need not wait
## for it (cargo locks a target directory while it builds).
BENCH_RUNS ?= 3
BENCH_TARGET_DIR ?= $(CURDIR)/target
BENCH := $(CARGO) bench --target-dir $(BENCH_TARGET_DIR) -p fulfilld
bench: SHELL := /bin/bash
bench: .SHELLFLAGS := -o pipefail -c
bench: components
	mkdir -p target/bench
	{ $(BENCH) --bench fulfill && \
	  for run in $$(seq $(BENCH_RUNS)); do $(BENCH) --bench pubsub || exit 1; done && \
	  tests/with-redis.sh $(BENCH) --bench pipeline && \
	  tests/with-redis.sh $(BENCH) --bench swap; } 2>&1 \
	  | tee target/bench/run-$$(date -u +%Y%m%dT%H%M%SZ).txt

## The default component against the embedded mocked host: every shipped scenario.
run: components
	$(CARGO) run -q -p fulfilld -- test --verbose $(COMPONENT_DIR)/fulfillment.wasm tests/scenarios

## The whole pipeline on this machine (no Redis, no Salesforce needed): the sandbox, `serve` on
## the embedded store, a few orders and their status as it changes; the pipeline's log in
## target/demo.log. Ctrl-C stops. Only the demo's own lines reach stdout (`make demo > out.txt`).
demo:
	@$(MAKE) --no-print-directory -s components >/dev/null
	@$(CARGO) run -q -p fulfilld -- demo --component $(COMPONENT_DIR)/fulfillment.wasm

check-component: components
	$(CARGO) run -q -p fulfilld -- component check $(COMPONENT_DIR)/fulfillment.wasm

## Fuzzing (docs/fuzzing.md), not part of `make test`: every cargo-fuzz target in fuzz/, one
## after the other, each for FUZZ_SECONDS (default 300) from the committed seeds, on the nightly
## toolchain (cargo-fuzz is installed when missing). FUZZ_TARGETS picks some: make fuzz FUZZ_TARGETS=soql
FUZZ_SECONDS ?= 300
FUZZ_TARGETS ?=
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) fuzz/run.sh $(FUZZ_TARGETS)

## The same, 20 seconds per target.
fuzz-smoke:
	FUZZ_SECONDS=20 fuzz/run.sh $(FUZZ_TARGETS)

## The deployment files (Dockerfile, deploy/): Kubernetes manifests against their schemas, every
## environment variable a real setting, stop timeouts longer than the shutdown grace, probes, the
## alerts (promtool) and the systemd unit (systemd-analyze verify). deploy/README.md says what it
## checks; its validators are installed under target/deploy-check on first use.
deploy-check:
	python3 deploy/check.py

clean:
	$(CARGO) clean
