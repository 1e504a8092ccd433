# framechain: `make run` and `make test` work on a fresh machine with only python3.11 and make.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TSTAMP := $(VENV)/.installed-test

.PHONY: run test bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e .
	touch $@

$(TSTAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP) $@

run: $(STAMP)
	$(VENV)/bin/framechain run examples/xpcs_demo.json

test: $(TSTAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(VENV)/bin/framechain bench

clean:
	rm -rf $(VENV) build *.egg-info
