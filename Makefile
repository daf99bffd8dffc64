# Every target creates or updates the virtual environment it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The compiled module state._native (Rust, PyO3): pip builds it with cargo, rustup's first.
NATIVE := state/native
NATIVE_SOURCES := $(NATIVE)/Cargo.toml $(NATIVE)/Cargo.lock $(wildcard $(NATIVE)/src/*.rs $(NATIVE)/src/*/*.rs)
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: demo test lint bench venv rust-deps services-deps clean

venv: $(STAMP)

# Reinstalled when the Rust sources change, so no stale build of them is ever tested.
$(STAMP): pyproject.toml $(NATIVE_SOURCES) | rust-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The demo's stores (time zones, locations) and products come from the sample reference files.
demo: venv
	NUDGEFLOW_STORES=samples/stores.csv NUDGEFLOW_PRODUCTS=samples/products.csv $(BIN)/nudgeflow run --out out/demo --force

# Integration tests use KAFKA_BOOTSTRAP_SERVERS / REDIS_URL when set; otherwise the test session
# starts a local Kafka 4.x broker (jars from Maven Central, Java 17) and Debian's redis-server.
test: venv services-deps
	$(BIN)/ruff check .
	cargo test --quiet --locked --manifest-path $(NATIVE)/Cargo.toml --no-default-features
	$(BIN)/python -m pytest -q

# Without rustup, Debian's Rust: cargo-web on bookworm (1.85+; its cargo 1.65 cannot read the sparse index), else cargo.
rust-deps:
	@command -v cargo >/dev/null || { \
		sudo=; [ "$$(id -u)" = 0 ] || sudo=sudo; $$sudo apt-get update -qq; \
		pkg=cargo; apt-cache show cargo-web >/dev/null 2>&1 && pkg=cargo-web; \
		$$sudo apt-get install -y -qq $$pkg >/dev/null; }
	@cargo --version

# Debian's redis-server for the Redis tests; Debian's chromium for the dashboard's browser test
# (Playwright drives it: no browser is downloaded).
services-deps:
	@command -v java >/dev/null || { echo "Java 17+ is needed for the local Kafka broker"; exit 1; }
	@command -v mvn >/dev/null || { echo "Maven is needed to fetch the Kafka jars"; exit 1; }
	@command -v redis-server >/dev/null && command -v redis-cli >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; \
		else sudo apt-get update -qq && sudo apt-get install -y -qq redis-server >/dev/null; fi; }
	@command -v chromium >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
		else sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; fi; }
	$(BIN)/python -m connectors.local_services jars

lint: venv
	$(BIN)/ruff check .

bench: venv
	$(BIN)/python bench/flow_bench.py

clean:
	rm -rf out .pytest_cache
