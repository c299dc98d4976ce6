# Set-up, demo and tests from a fresh clone: `make demo`, `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install demo test prometheus bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# One stage, in the pavdm process, on every core (the default; docs/design.md §2).
# The prompt is the default one (configs/default.yaml): a lone magenta square, which tests/test_tiny_model.py
# checks is drawn as its shape; the model does not yet bind two outlines to their objects (EVALUATION.md).
demo: $(STAMP)
	$(BIN)/pavdm generate --model tiny --seconds 60 --seed 0 --out demo.mp4

test: $(STAMP) prometheus
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# The metrics test scrapes a real Prometheus server (Debian's package; the test starts it on loopback).
prometheus:
	@command -v prometheus >/dev/null || { \
		echo "installing Debian's prometheus package for the metrics test"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq prometheus >/dev/null; }

bench: $(STAMP)
	$(BIN)/python benchmarks/sampler_overhead.py

clean:
	rm -rf $(VENV) build *.egg-info
