# chatgateway — see README.md. `make run` and `make test` are the two set-up commands.
SHELL := /bin/bash
CARGO ?= cargo
VENV := .venv
LISTEN ?= 127.0.0.1:8080

.PHONY: run test lint fmt deps venv clean bench bench-redis

## run: one gateway, in-memory engine, insecure dev auth (?user=NAME), demo page on http://$(LISTEN)/
run:
	CHATGW_AUTH__MODE=insecure CHATGW_ENGINE=memory RUST_LOG=$${RUST_LOG:-info} \
	  $(CARGO) run --release -p chat-gateway -- --listen $(LISTEN)

## test: everything CI runs (installs what it needs on a fresh Debian machine)
test: deps venv
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace

## deps: system packages the tests use (Debian; needs root)
deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

## venv: Python tools for chart and manifest validation, in a git-ignored venv
venv: $(VENV)/.installed
$(VENV)/.installed: requirements-dev.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf $(VENV)

## bench: the standard load runs (about 5 min, 2 cores): bench/results.json + bench/summary.md
bench: deps
	bench/run.sh

## bench-redis: cross-process delivery latency and publish throughput through Redis (not a test)
bench-redis: deps
	$(CARGO) build --release -p e2e --bin redis-bench -p chat-gateway
	./target/release/redis-bench 20000 64 1
	./target/release/redis-bench 5000 1 1
