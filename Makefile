# hpacs: `make up` runs a whole site locally, `make test` runs every check CI runs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= deploy/hpacs.dev.toml

.PHONY: up test venv deps viewer lint unit clean bench bench-sync

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# $(call apt_need,CHECK,PACKAGE): when the shell test CHECK fails, install Debian's PACKAGE (as
# root with apt-get, as on a clean CI machine), otherwise say how and stop.
apt_need = if ! $(1) >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's $(2)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) >/dev/null; \
	  else \
	    echo "$(2) is missing: install it (Debian/Ubuntu: sudo apt-get install $(2)) and rerun"; \
	    exit 1; \
	  fi; \
	fi

# DCMTK (echoscu, storescu, findscu, movescu, getscu, storescp) is the other side in tests.
# Debian's chromium runs the console tests (Playwright drives it; no browser download).
# systemd-analyze verifies deploy/systemd units in tests/test_deploy.py.
# Orthanc with its DICOMweb plugin is a DIMSE and DICOMweb peer in tests and the baseline in
# bench/; PostgreSQL's server runs the cloud catalog's second backend (a temporary cluster
# per test session, never the system's own).
ORTHANC_DICOMWEB := /usr/share/orthanc/plugins/libOrthancDicomWeb.so
PG_BIN := /usr/lib/postgresql/15/bin
deps:
	@$(call apt_need,command -v storescu,dcmtk)
	@$(call apt_need,command -v chromium,chromium)
	@$(call apt_need,command -v systemd-analyze,systemd)
	@$(call apt_need,command -v Orthanc,orthanc)
	@$(call apt_need,test -f $(ORTHANC_DICOMWEB),orthanc-dicomweb)
	@$(call apt_need,test -x $(PG_BIN)/postgres,postgresql)

# The OHIF viewer served at /viewer/: @ohif/app's prebuilt dist/ at the version pinned in
# viewer/package-lock.json; `npm ci` checks the tarball against the lock's integrity hash and runs
# none of the package's scripts. Nothing is downloaded at run time; node_modules is not committed.
VIEWER_STAMP := viewer/node_modules/.installed
$(VIEWER_STAMP): viewer/package.json viewer/package-lock.json
	@$(call apt_need,command -v npm,npm)
	cd viewer && npm ci --ignore-scripts --no-audit --no-fund
	touch $@

viewer: $(VIEWER_STAMP)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy edge shared sync cloud_api

unit: venv deps viewer
	$(BIN)/pytest -q -ra $(PYTEST_ARGS)

test: venv deps lint unit

# CLOUD_CATALOG=postgresql make up: the cloud API on a local PostgreSQL cluster under var/postgres
# (URL in var/cloud-catalog.url); default: its SQLite file under var/cloud.
up: venv viewer
	@mkdir -p var
	$(BIN)/python deploy/devup.py --config $(CONFIG)

bench: venv deps
	$(BIN)/python bench/ingest.py

# Sync agent: backlog drain (file:// and the GCS emulator), recall of an evicted study, idle CPU.
bench-sync: venv deps
	$(BIN)/python bench/sync.py

clean:
	rm -rf var .pytest_cache .ruff_cache
