# The two commands of the quick start: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench

run: $(VENV)/.installed-run
	$(BIN)/mailpipe serve

test: $(VENV)/.installed-test
	sh tests/system-deps.sh
	$(BIN)/pytest

lint: $(VENV)/.installed-test
	$(BIN)/ruff check mailpipe tests bench

bench: $(VENV)/.installed-test
	sh tests/system-deps.sh
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/triage.py
	$(BIN)/python bench/outbound.py

# Debian ships venv's pip bootstrap separately (python3-venv): install it when venv fails.
$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); sh tests/system-deps.sh python3-venv && $(PYTHON) -m venv $(VENV); }

$(VENV)/.installed-run: pyproject.toml $(VENV)/bin/python
	$(BIN)/pip install --quiet --disable-pip-version-check -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/bin/python
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@ $(VENV)/.installed-run
