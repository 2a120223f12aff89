# Tenantry — the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The venv is rebuilt when the dependencies change.
VENV_STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)

.PHONY: help venv toolchain node-toolchain images node-prerequisites e2e cluster-up cluster-down demo demo-down crd operator-lock lint test test-unit bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(VENV_STAMP): pyproject.toml
	@rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	@touch $@

venv: $(VENV_STAMP) ## create the virtualenv with every dependency

toolchain: ## build (or reuse) the control plane and the chart tools (helm, kubeconform, kube-score, kstatus) from Go modules
	@start=$$SECONDS; bash e2e/toolchain/build.sh >/dev/null && \
	  echo "make toolchain: $$((SECONDS - start))s"

# The real node's programs (docs/real-node.md); `make test` builds them where the node can run.
node-toolchain: ## build (or reuse) the real node's kubelet, kube-proxy, CoreDNS, kube-router and pause from Go modules
	@start=$$SECONDS; bash e2e/toolchain/build.sh node >/dev/null && \
	  echo "make node-toolchain: $$((SECONDS - start))s"

# No registry is needed: the base comes from Debian packages (mmdebstrap) and buildah builds the
# two Dockerfiles on it; the node's pause and CoreDNS images hold one binary each. The OCI archives
# are cached per user, keyed by what makes them. Needs root (it installs buildah, mmdebstrap and
# runc with apt-get when missing).
images: ## build (or reuse) the runtime, operator, pause and CoreDNS images as OCI archives; `python3 e2e/images.py verify` runs the first two
	@start=$$SECONDS; $(PYTHON) e2e/images.py >/dev/null && $(PYTHON) e2e/images.py node >/dev/null && \
	  echo "make images: $$((SECONDS - start))s"

# Built before pytest starts (minutes when cold, not timed as a test) wherever the real node can
# run: root on Linux, unless TENANTRY_REAL_NODE=0. Elsewhere tests/realnode fails saying what
# this machine lacks; it is never skipped.
node-prerequisites:
	@if [ "$$(id -u)" = 0 ] && [ "$$(uname -s)" = Linux ] && [ "$${TENANTRY_REAL_NODE:-}" != 0 ]; then \
	  $(MAKE) --no-print-directory node-toolchain images; \
	else echo "make test: no real node here (it needs root on Linux): tests/realnode will fail saying so"; fi

e2e: venv toolchain node-prerequisites ## the real node's tests alone: builds what is missing, brings the node up (root)
	@$(BIN)/python e2e/cluster.py up
	@start=$$SECONDS; $(BIN)/pytest tests/realnode; status=$$?; \
	  echo "make e2e: pytest took $$((SECONDS - start))s"; exit $$status

cluster-up: venv ## start the local control plane and, as root on Linux, the real node (or reuse them); kubeconfig in .cache/cluster/kubeconfig
	@$(BIN)/python e2e/cluster.py up

cluster-down: ## stop the control plane, the real node (and a demo operator), leaving no process, mount, namespace or rule behind
	@$(PYTHON) e2e/demo.py down
	@$(PYTHON) e2e/cluster.py down
	@TENANTRY_CLUSTER_NAME=tenantry-bench $(PYTHON) e2e/cluster.py down

demo: cluster-up ## the operator on the local cluster with the example tenants; stays up for exploring
	@$(BIN)/python e2e/demo.py

demo-down: ## stop the demo operator (the cluster keeps running)
	@$(PYTHON) e2e/demo.py down

crd: venv ## regenerate crds/ (and the chart's copy) from the models
	$(BIN)/tenantry crd agenttenants > crds/agenttenants.tenantry.dev.yaml
	$(BIN)/tenantry crd agenttenanttemplates > crds/agenttenanttemplates.tenantry.dev.yaml
	cp crds/*.yaml charts/tenantry/crds/

# The operator image installs exactly these pins (operator_image/install.sh). Resolved with the
# image's Python (3.11): markers such as python_version must come out the same.
LOCK := .cache/lock
PIP_COMPILE := $(LOCK)/bin/pip-compile --quiet --generate-hashes --strip-extras --allow-unsafe \
	--no-emit-index-url --no-emit-find-links
operator-lock: ## re-pin the operator image's dependencies from pyproject.toml (operator_image/*.txt)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11) and "operator-lock: run with PYTHON=python3.11, the image'"'"'s Python")'
	$(PYTHON) -m venv $(LOCK)
	$(LOCK)/bin/pip install --quiet pip-tools==7.6.2
	$(PIP_COMPILE) --output-file operator_image/requirements.txt pyproject.toml
	$(PIP_COMPILE) --output-file operator_image/build-requirements.txt operator_image/build-requirements.in

lint: venv ## ruff, mypy (strict) and import-linter
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# The toolchain is built before pytest starts, so a cold build (minutes) is not timed as a test.
test: lint toolchain node-prerequisites ## every test; starts the local control plane (and the real node) when not running
	@start=$$SECONDS; $(BIN)/pytest; status=$$?; \
	  echo "make test: pytest took $$((SECONDS - start))s"; exit $$status

test-unit: venv ## only the tests that need no cluster (the chart's need helm and kube-score)
	@bash e2e/toolchain/build.sh tools >/dev/null
	$(BIN)/pytest -m "not cluster"

# Not part of `make test`: it takes about 40 minutes and wants the machine to itself.
# valgrind counts the runtime guard's instructions (bench/runtime.py): installed when missing
# and the runtime's section runs; without it the section runs and says it did not count.
bench: venv ## benchmarks on a cluster of their own; writes docs/benchmarks.md and docs/bench/ (SECTIONS=provisioning,latency,runtime,realnode)
	@case ",$${SECTIONS:-runtime}," in *,runtime,*) command -v valgrind >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	    apt-get install -y -qq --no-install-recommends valgrind >/dev/null; } || \
	  echo "make bench: no valgrind (apt-get install valgrind): instructions not counted";; esac
	@start=$$SECONDS; $(BIN)/python -m bench; status=$$?; \
	  echo "make bench: $$((SECONDS - start))s"; exit $$status

clean: cluster-down ## remove the venv and the repo-local state (the per-user binary cache stays)
	rm -rf $(VENV) .cache
