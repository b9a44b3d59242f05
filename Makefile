# hpacs: `make up` runs a whole site locally, `make test` runs every check CI runs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= deploy/hpacs.dev.toml

.PHONY: up test venv deps lint unit clean bench bench-sync

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# DCMTK (echoscu, storescu, findscu, movescu, getscu, storescp) is the other side in tests.
deps:
	@if ! command -v storescu >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's dcmtk"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dcmtk >/dev/null; \
	  else \
	    echo "DCMTK is missing: install it (Debian/Ubuntu: sudo apt-get install dcmtk) and rerun"; \
	    exit 1; \
	  fi; \
	fi
	@# Debian's chromium runs the console tests (Playwright drives it; no browser download).
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "chromium is missing: install it (Debian/Ubuntu: sudo apt-get install chromium) and rerun"; \
	    exit 1; \
	  fi; \
	fi
	@# systemd-analyze verifies deploy/systemd units in tests/test_deploy.py.
	@if ! command -v systemd-analyze >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's systemd (for systemd-analyze)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null; \
	  else \
	    echo "systemd-analyze is missing: install it (Debian/Ubuntu: sudo apt-get install systemd) and rerun"; \
	    exit 1; \
	  fi; \
	fi

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

unit: venv deps
	$(BIN)/pytest -q -ra $(PYTEST_ARGS)

test: venv deps lint unit

up: venv
	@mkdir -p var
	$(BIN)/python deploy/devup.py --config $(CONFIG)

bench: venv deps
	$(BIN)/python bench/ingest.py

# Sync agent: backlog drain (file:// and the GCS emulator), recall of an evicted study, idle CPU.
bench-sync: venv deps
	$(BIN)/python bench/sync.py

clean:
	rm -rf var .pytest_cache .ruff_cache
