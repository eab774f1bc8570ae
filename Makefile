# Two commands a new user needs: `make demo` and `make test`. Both create .venv and install first:
# the demo only what it runs (the base install), the tests everything (test, bench, kfp extras).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO_STAMP := $(VENV)/.demo-stamp
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: venv demo-venv demo test test-fast lint docs bench bench-quick image-test clean

$(DEMO_STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -c constraints.txt -e .
	touch $(DEMO_STAMP)

$(STAMP): $(DEMO_STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,bench,kfp]'
	touch $(STAMP)

venv: $(STAMP)

demo-venv: $(DEMO_STAMP)

demo: demo-venv
	$(BIN)/python -m pipeline_components.tools.demo

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: lint
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# The CPU image built with podman on a locally made base, run as the k8s manifests run it: --help,
# the demo, serve + a gRPC Predict from the host, weights without egress (docs/container.md).
# Needs root; installs podman and debootstrap with apt-get when missing, or skips with one line.
image-test: venv
	HOST_PYTHON=$(BIN)/python docker/image-test.sh

# docs/configuration.md, generated from the config classes (tests/test_docs.py checks it is current)
docs: demo-venv
	$(BIN)/python -m pipeline_components.tools.config_reference --output docs/configuration.md

bench: venv
	$(BIN)/python -m benchmarks

bench-quick: venv
	$(BIN)/python -m benchmarks --quick

clean:
	rm -rf demo_output .pytest_cache .ruff_cache
