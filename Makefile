# abtest-harness: every target sets up .venv itself, so on a fresh machine
# `make run` and `make test` are the only two commands needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARTIFACTS ?= artifacts
PYTEST_ARGS ?=

.PHONY: help venv run test unit e2e bench lint types tox validate render base-image clean istio-xds differential

help:
	@echo "make run         run the whole rollout on the local Envoy mesh (the main job)"
	@echo "make test        run the test suite (unit, local-mesh rollout, docker where available)"
	@echo "make e2e         run the rollout suite on a real kind cluster with Istio"
	@echo "make bench       print the benchmark figures"
	@echo "make lint types  ruff and mypy"
	@echo "make validate    render and validate every stage offline"
	@echo "make base-image  build the local Debian base image (no registry needed)"
	@echo "make istio-xds   build Istio's gateway translation (Go) into .cache/bin/istio-xds"
	@echo "make differential  compare the oracle, the Python translation and Istio's (needs istio-xds)"

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

run: $(STAMP)
	$(PY) -m harness.cli run --mesh local --artifacts-dir $(ARTIFACTS)

validate: $(STAMP)
	$(PY) -m harness.cli validate --all

render: $(STAMP)
	$(PY) -m harness.cli render --stage $(or $(STAGE),Blue_50)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

unit: $(STAMP)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

# The prerequisite check runs before the venv install: on an offline machine it names what is
# missing within seconds instead of failing inside pip.
e2e:
	@if [ -x $(PY) ]; then $(PY) -m harness.prereqs kind; else $(PYTHON) -m harness.prereqs kind; fi
	@$(MAKE) --no-print-directory venv
	$(PY) -m pytest tests/e2e --mesh=kind --artifacts-dir $(ARTIFACTS) \
	  $(if $(KEEP_CLUSTER),--keep-cluster) $(if $(CLUSTER),--cluster-name $(CLUSTER)) $(PYTEST_ARGS)

bench: $(STAMP)
	@set -e; for f in bench/bench_*.py; do \
	  m=$$(basename $$f .py); echo "== $$m"; $(PY) -m bench.$$m; echo; \
	done

lint: $(STAMP)
	$(VENV)/bin/ruff check harness fixtures tests bench

types: $(STAMP)
	$(VENV)/bin/mypy

tox: $(STAMP)
	$(PY) -m pip install --quiet tox
	$(VENV)/bin/tox

base-image:
	images/base/build-base-image

clean:
	rm -rf $(ARTIFACTS) .pytest_cache .mypy_cache .ruff_cache build *.egg-info

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
