# Quick start: `make demo` runs the whole slimming pipeline on embedded data; `make test` runs the tests.
# Both make the project's own environment first (.venv, with the system python3; see tools/setup-venv).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench

$(STAMP): pyproject.toml tools/setup-venv
	sh tools/setup-venv "$(PYTHON)" "$(VENV)"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/netslim run demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/run_all.py --quick
