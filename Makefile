# redeploy-operator: build, test and try it out locally.
#
#   make test          builds the control plane, node and Gitea binaries when missing, then runs every test
#   make image         builds the operator's image without a container daemon (target/image/redeploy-operator.tar; IMAGE=<ref> pushes it)
#   make lint          cargo fmt --check and clippy with warnings as errors
#   make bench         times the hook's hot path (parse + verify + plan) against baselines
#   make load          loads the hook on a local control plane, next to a plain client's creates
#   make latency       hook call to first workload patch and to build Job created, at 20/s and 100/s (LATENCY_SECONDS each)
#   make scale         the operator at scale (1,000 Apps x 10 Services): memory, start-up, a 500-Service fan-out
#   make fuzz          runs every fuzz target (fuzz/) for FUZZ_SECONDS each; needs nightly and cargo-fuzz
#   make crds          regenerates crds/ (and the chart's copy) from the Rust types
#   make cluster       starts a local control plane in the background, with the real node where the machine can run one
#   make cluster-down  stops it
#   make demo          the README's demo: cluster, CRDs, operator, examples/, a signed GitHub push, the rollout

SHELL := bash
CARGO ?= cargo
CLUSTER_DIR ?= $(CURDIR)/.cluster

# Where hack/build-control-plane.sh caches etcd, Kubernetes and kwok binaries.
CONTROL_PLANE_BIN = $(shell bash hack/build-control-plane.sh)
# Where hack/build-node.sh caches the real node's binaries and the registry,
# and hack/build-images.sh the layers of its images.
NODE_BIN = $(shell bash hack/build-node.sh)
NODE_IMAGES = $(shell bash hack/build-images.sh "$(NODE_BIN)")
# Where hack/build-gitea.sh caches Gitea (tests/gitea.rs's Git host).
GITEA_BIN = $(shell bash hack/build-gitea.sh)

# Seconds each fuzz target runs in `make fuzz`.
FUZZ_SECONDS ?= 20

.PHONY: all build test lint fuzz bench load latency scale crds control-plane node gitea image cluster cluster-down demo

all: build

build:
	$(CARGO) build --workspace --all-targets

control-plane:
	@bash hack/build-control-plane.sh

node:
	@bash hack/build-images.sh "$$(bash hack/build-node.sh)"

gitea:
	@bash hack/build-gitea.sh

# The users' route is the Dockerfile; this builds the same layout from a host build (see the script).
image: node
	@bash hack/build-operator-image.sh "$(NODE_BIN)"

test: control-plane node gitea
	REDEPLOY_CONTROL_PLANE_BIN="$(CONTROL_PLANE_BIN)" REDEPLOY_NODE_BIN="$(NODE_BIN)" REDEPLOY_NODE_IMAGES="$(NODE_IMAGES)" \
	  REDEPLOY_GITEA_BIN="$(GITEA_BIN)" \
	  $(CARGO) test --workspace --all-targets --no-fail-fast

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Fails if any target finds a crash; see fuzz/run.sh for the corpus and the artifacts.
fuzz:
	FUZZ_SECONDS="$(FUZZ_SECONDS)" bash fuzz/run.sh

bench:
	$(CARGO) bench --bench hook_path

load: control-plane
	REDEPLOY_CONTROL_PLANE_BIN="$(CONTROL_PLANE_BIN)" $(CARGO) bench --bench hook_load

latency: control-plane
	REDEPLOY_CONTROL_PLANE_BIN="$(CONTROL_PLANE_BIN)" $(CARGO) bench --bench latency

scale: control-plane
	REDEPLOY_CONTROL_PLANE_BIN="$(CONTROL_PLANE_BIN)" $(CARGO) bench --bench scale

crds:
	$(CARGO) run -q -- crds --dir crds
	$(CARGO) run -q -- crds --dir charts/redeploy-operator/crds

cluster: control-plane
	@$(CARGO) build -q -p redeploy-testenv
	@if [ -f "$(CLUSTER_DIR)/pid" ] && kill -0 "$$(cat "$(CLUSTER_DIR)/pid")" 2>/dev/null; then \
	  echo "a cluster is already running (make cluster-down stops it)"; \
	else \
	  rm -rf "$(CLUSTER_DIR)"; mkdir -p "$(CLUSTER_DIR)"; \
	  REDEPLOY_CONTROL_PLANE_BIN="$(CONTROL_PLANE_BIN)" nohup target/debug/redeploy-testenv "$(CLUSTER_DIR)" \
	    >"$(CLUSTER_DIR)/testenv.log" 2>&1 & echo $$! >"$(CLUSTER_DIR)/pid"; \
	  for _ in $$(seq 1 9000); do \
	    [ -f "$(CLUSTER_DIR)/ready" ] && break; \
	    kill -0 "$$(cat "$(CLUSTER_DIR)/pid")" 2>/dev/null || { cat "$(CLUSTER_DIR)/testenv.log"; exit 1; }; \
	    sleep 0.2; \
	  done; \
	  [ -f "$(CLUSTER_DIR)/ready" ] || { echo "the control plane did not start; see $(CLUSTER_DIR)"; exit 1; }; \
	fi
	@if [ -f "$(CLUSTER_DIR)/real-node.env" ]; then \
	  echo "# With the real node real-node-0: pods run for real (details in $(CLUSTER_DIR)/real-node.env)."; \
	else \
	  echo "# Without the real node ($$(head -n 1 "$(CLUSTER_DIR)/real-node-unavailable" 2>/dev/null || echo "not started")): kwok completes pods."; \
	fi
	@echo "# The control plane runs in the background (logs in $(CLUSTER_DIR)). Use it with:"
	@echo "export KUBECONFIG=$(CLUSTER_DIR)/kubeconfig PATH=\"$(CONTROL_PLANE_BIN):\$$PATH\""

cluster-down:
	@if [ -f "$(CLUSTER_DIR)/pid" ]; then \
	  pid=$$(cat "$(CLUSTER_DIR)/pid"); kill "$$pid" 2>/dev/null || true; \
	  while kill -0 "$$pid" 2>/dev/null; do sleep 0.2; done; \
	  rm -f "$(CLUSTER_DIR)/pid"; echo "stopped"; \
	else echo "no cluster is running"; fi

# Builds the operator and the test control plane, then runs hack/demo.sh.
demo: control-plane
	$(CARGO) build -q -p redeploy-operator -p redeploy-testenv --bins
	@CLUSTER_DIR="$(CLUSTER_DIR)" MAKE="$(MAKE)" bash hack/demo.sh
