# Two commands do all set-up on a fresh machine:
#   make e2e    the main job: render, bring up a cluster, drive traffic, run chaos, verify, report
#   make test   the test suite (contract tests, local-backend integration tests)
#   make test-fast  the fast lane: no root, no local cluster, no slow test (under a minute)
# Both bootstrap .venv (and, as root, the Debian packages the local backend needs).

PY        ?= python3
VENV      := .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.installed
APTSTAMP  := $(VENV)/.apt-installed
BACKEND   ?= auto
TOPOLOGY  ?= fixtures/topology.yaml
EDITION   ?=
EXPERIMENT?= experiments/edge-outage.json
CONTEXT   ?=
ALLOW_CONTEXT ?=
PYTEST_ARGS ?=
# backend flags, shared by every target that talks to a cluster
BFLAGS    = --backend $(BACKEND) $(if $(CONTEXT),--context $(CONTEXT)) $(if $(ALLOW_CONTEXT),--allow-context $(ALLOW_CONTEXT))

APT_PKGS  := nftables iproute2 chromium procps openssl

.PHONY: all e2e nightly test test-fast test-properties test-install fuzz soak lint lint-imports bench clean chaos render up down status venv deps

all: test

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -m pip install -q -e ".[test]"
	@touch $@

$(APTSTAMP):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi; \
	else echo "not root: skipping Debian packages ($(APT_PKGS)); the local backend needs root"; fi
	@mkdir -p $(VENV) && touch $@

deps: $(STAMP) $(APTSTAMP)
venv: deps

render: deps
	$(BIN)/harness render --topology $(TOPOLOGY) $(if $(EDITION),--edition $(EDITION)) --out out/manifests

e2e: deps
	$(BIN)/harness e2e $(BFLAGS) --topology $(TOPOLOGY) $(if $(EDITION),--edition $(EDITION)) --experiment $(EXPERIMENT)

# Nightly against EKS with Local Zones: make nightly CONTEXT=<kube context> (destructive chaos allowed and executed
# there: --execute; without it a run against an existing cluster stops at its plan).
# Only faults EKS can take: edge pod kill + unready (eks-edge.json), node kill by cordon + delete.
# Entry URLs per zone: EH_ENTRYPOINTS='{"<zone>": "https://..."}' or NIGHTLY_FLAGS="--entrypoint ZONE=URL ...";
# NIGHTLY_FLAGS may also add --install-consul or --own-mesh-defaults (README "Run against EKS").
NIGHTLY_FLAGS ?=
nightly: deps
	@test -n "$(CONTEXT)" || { echo "make nightly: CONTEXT=<kubeconfig context> is required" >&2; exit 2; }
	$(BIN)/harness e2e --backend existing --context $(CONTEXT) --allow-context $(CONTEXT) --execute --topology $(TOPOLOGY) \
	  $(NIGHTLY_FLAGS) --experiment experiments/eks-edge.json --experiment experiments/node-kill.json

chaos: deps
	$(BIN)/harness chaos $(BFLAGS) $(EXPERIMENT)

up: deps
	$(BIN)/harness up $(BFLAGS) --topology $(TOPOLOGY)

down: deps
	$(BIN)/harness down $(BFLAGS)

status: deps
	$(BIN)/harness status $(BFLAGS)

# Two lanes side by side (tests/lanes.py): the local-backend tests (mostly waiting on real processes, one
# cluster at a time under the machine's lock) and everything else (CPU-bound, no cluster).
test: deps lint-imports
	$(BIN)/python -m tests.lanes $(PYTEST_ARGS)

# The fast lane (README "Tests"): what runs without root and without a local cluster, slow tests left out.
# EH_NO_LOCAL=1 makes the local-backend tests skip even as root, so the lane takes no lock either;
# four xdist workers stealing work: half the lane waits on subprocesses and sockets, so two per core keep
# both cores busy (a module fixture is then set up once per worker that runs the module's tests).
test-fast: deps lint-imports
	EH_NO_LOCAL=1 $(BIN)/python -m pytest -q -n 4 --dist worksteal -m "not local and not slow" $(PYTEST_ARGS)

# The property tests with Hypothesis's own example counts (make test bounds them: tests/conftest.py profiles)
test-properties: deps
	$(BIN)/python -m pytest -q -m property --hypothesis-profile=thorough $(PYTEST_ARGS)

# `pip install .` (not editable) into a fresh venv, then `harness e2e --backend local` from another directory:
# the package finds its fixtures, load tests and experiments as package data (tests/test_install.py).
test-install: deps
	$(BIN)/python -m pytest -q tests/test_install.py $(PYTEST_ARGS)

# The input fuzz tests with the long hypothesis profile (make test runs them with a bounded one)
fuzz: deps
	$(BIN)/python -m pytest --hypothesis-profile=fuzz tests/test_fuzz_inputs.py $(PYTEST_ARGS)

# The pipeline's layering (pyproject.toml [tool.importlinter], docs/ARCHITECTURE.md)
lint-imports: deps
	$(BIN)/lint-imports --no-cache

lint: deps lint-imports
	$(BIN)/ruff check harness tests bench loadtests
	$(BIN)/mypy

bench: deps
	$(BIN)/python bench/run.py

# The harness's own memory and open files under traffic and faults for MINUTES (default 30), local backend
MINUTES ?= 30
soak: deps
	$(BIN)/python bench/soak.py --minutes $(MINUTES)

clean:
	-@test -x $(BIN)/harness && $(BIN)/harness down --backend local --all >/dev/null 2>&1 || true
	rm -rf out runs build *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
