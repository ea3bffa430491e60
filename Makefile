# chatgateway — see README.md. `make run` and `make test` are the two set-up commands.
SHELL := /bin/bash
CARGO ?= cargo
VENV := .venv
LISTEN ?= 127.0.0.1:8080

.PHONY: run test lint doc fmt deps venv envtest clean crds bench bench-redis bench-redis-cluster test-browser manifests image e2e-cluster cluster-up cluster-down fuzz fuzz-smoke fuzz-tools mutants

## run: one gateway, in-memory engine, insecure dev auth (?user=NAME), demo page on http://$(LISTEN)/
run:
	CHATGW_AUTH__MODE=insecure CHATGW_ENGINE=memory CHATGW_DRAIN__ACCEPT_GRACE=0s RUST_LOG=$${RUST_LOG:-info} \
	  $(CARGO) run --release -p chat-gateway -- --listen $(LISTEN)

## test: everything CI runs (installs what it needs on a fresh Debian machine)
test: deps venv envtest
	$(MAKE) lint
	$(CARGO) deny check bans licenses sources
	NODE=$$(bash e2e/browser/node.sh) $(CARGO) test --workspace

## deps: system packages the tests use (Debian; needs root): redis-server (Redis 7: the
## cluster and Sentinel tests run it as cluster nodes and as `redis-server --sentinel`),
## redis-tools (redis-cli: `--cluster create`/`reshard`), and promtool from prometheus for
## the alert tests (on a systemd machine Debian also enables a Prometheus service), the C
## and C++ compilers some crates build with (ring, jemalloc; libFuzzer for `make fuzz`),
## python3-venv for `make venv`; cargo-deny (deny.toml), built into ~/.cargo/bin when
## missing (about 3 minutes on 2 cores); and Node 20+ for the tests of /client.js
## (e2e/browser/node.sh: from the npm registry into a cache when the machine's is older)
CARGO_DENY_VERSION := 0.20.2
deps:
	@$(CARGO) deny --version 2>/dev/null | grep -qx 'cargo-deny $(CARGO_DENY_VERSION)' || { \
	  echo "installing cargo-deny $(CARGO_DENY_VERSION) into ~/.cargo/bin"; \
	  $(CARGO) install --locked --quiet cargo-deny --version $(CARGO_DENY_VERSION); }
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v redis-cli >/dev/null || missing="$$missing redis-tools"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v cc >/dev/null || missing="$$missing gcc libc6-dev"; \
	command -v c++ >/dev/null || missing="$$missing g++"; \
	python3 -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3 python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@bash e2e/browser/node.sh >/dev/null

## envtest: a real kube-apiserver + etcd for the operator and chart tests (built once from
## Debian's kubernetes source into $CHATGW_K8S_CACHE, default /var/cache/chatgateway-k8s)
envtest:
	@bash e2e/k8s/build.sh ensure >/dev/null

## venv: Python tools for chart and manifest validation, in a git-ignored venv
venv: $(VENV)/.installed
$(VENV)/.installed: requirements-dev.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(MAKE) doc

## doc: the crates' docs, internals included (target/doc); a broken link or tag fails it
doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps --document-private-items

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf $(VENV)

## bench: the standard load runs (about 12 min, 2 cores): bench/results.json + bench/summary.md
bench: deps
	bench/run.sh
	$(MAKE) bench-redis-cluster

## bench-redis: cross-process delivery latency and publish throughput through Redis (not a test)
bench-redis: deps
	$(CARGO) build --release -p e2e --bin redis-bench -p chat-gateway
	./target/release/redis-bench 20000 64 1
	./target/release/redis-bench 5000 1 1

## bench-redis-cluster: Redis calls per connection and per message on a local 3+3 Redis Cluster
## (INFO commandstats), and publish throughput through two gateways (not a test)
bench-redis-cluster: deps
	$(CARGO) build --release -p e2e --bin redis-cluster-bench -p chat-gateway
	./target/release/redis-cluster-bench 20000 12 200 64

## test-browser: the demo page in headless Chromium through gateway restarts (Debian chromium, npm playwright-core)
test-browser: deps
	@command -v chromium >/dev/null || { if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }
	$(CARGO) build -p chat-gateway
	node=$$(bash e2e/browser/node.sh) && cd e2e/browser && npm ci --no-audit --no-fund && "$$node" --test chat.test.mjs

## mutants: mutation testing of the gateway's connection, outbound, hub, heartbeat, protocol, drain and engine
## modules (cargo-mutants, installed once into ~/.cargo/bin); slow, not in CI. Scope and test
## set in .cargo/mutants.toml, report in mutants.out/, results in docs/testing.md. Options:
## MUTANTS_ARGS, e.g. "--shard 0/12 --sharding round-robin" for a sample.
CARGO_MUTANTS_VERSION := 27.1.0
MUTANTS_TESTS := -p chat-gateway -p e2e --lib --test protocol --test inbox --test engine_redis
mutants: deps
	@cargo-mutants --version 2>/dev/null | grep -qF "$(CARGO_MUTANTS_VERSION)" || \
	  $(CARGO) install --locked --version $(CARGO_MUTANTS_VERSION) cargo-mutants
	@# The unmutated baseline is run here: cargo-mutants' own baseline runs only the mutated
	@# package's tests, where the e2e test targets do not exist.
	$(CARGO) test $(MUTANTS_TESTS)
	nice $(CARGO) mutants --baseline skip --timeout 240 $(MUTANTS_ARGS)

## crds: regenerate crds/chatgateway.yaml from the Rust types, then the chart and install.yaml copies
crds: venv
	$(CARGO) run -q -p chat-gateway-operator --bin crdgen > crds/chatgateway.yaml
	$(VENV)/bin/python charts/generate.py

## manifests: regenerate the chart's CRD copy, manifests/install.yaml and the adapter rules from the chart
manifests: venv
	$(VENV)/bin/python charts/generate.py

## image: build both container images (needs a Docker engine with BuildKit; the context is the
## repo root). DOCKER_BUILD_ARGS swaps base images, e.g. --build-arg BUILDER_IMAGE=...
IMAGE_TAG ?= 0.1.0
DOCKER_BUILD_ARGS ?=
image:
	DOCKER_BUILDKIT=1 docker build $(DOCKER_BUILD_ARGS) -f gateway/Dockerfile -t ghcr.io/chatgateway/chat-gateway:$(IMAGE_TAG) .
	DOCKER_BUILDKIT=1 docker build $(DOCKER_BUILD_ARGS) -f operator/Dockerfile -t ghcr.io/chatgateway/chat-gateway-operator:$(IMAGE_TAG) .

## fuzz: every cargo-fuzz target of gateway/fuzz for FUZZ_SECONDS each (the stable
## toolchain with RUSTC_BOOTSTRAP=1 and AddressSanitizer; corpus in gateway/fuzz/corpus)
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := command config_env pubsub_payload
fuzz: fuzz-tools
	@set -o pipefail; for t in $(FUZZ_TARGETS); do \
	  mkdir -p gateway/fuzz/corpus/$$t; \
	  echo "fuzzing $$t for $(FUZZ_SECONDS) s"; \
	  (cd gateway/fuzz && RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t corpus/$$t seeds/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 2>&1 | tail -n 12) || exit 1; \
	done

## fuzz-smoke: the short fuzz run CI does after `make test` (10 s per target)
fuzz-smoke:
	$(MAKE) fuzz FUZZ_SECONDS=10

CARGO_FUZZ_VERSION := 0.13.2
fuzz-tools:
	@cargo-fuzz --version 2>/dev/null | grep -qF '$(CARGO_FUZZ_VERSION)' || \
	  $(CARGO) install --locked --quiet cargo-fuzz --version $(CARGO_FUZZ_VERSION)

## e2e-cluster: the cluster suite (e2e/cluster). With KUBECONFIG set, against that cluster;
## otherwise it starts the local single-node Kubernetes (built from source, first run ~30 min),
## builds the images into it, runs the suite and stops it. Needs root.
e2e-cluster: venv
	bash e2e/k8s/suite.sh

## cluster-up / cluster-down: the local single-node cluster alone, with the images built into
## it; then `eval "$(bash e2e/k8s/cluster.sh env)"` gives KUBECONFIG, DOCKER_HOST and kubectl
cluster-up:
	bash e2e/k8s/cluster.sh up
	bash -c 'eval "$$(bash e2e/k8s/cluster.sh env)" && bash e2e/k8s/images.sh build'
cluster-down:
	bash e2e/k8s/cluster.sh down
