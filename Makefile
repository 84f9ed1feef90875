# Quick start: `make demo` runs the whole slimming pipeline on embedded data; `make test` runs the tests.
PYTHON ?= python3
STAMP := .venv-installed

.PHONY: install demo test lint bench

$(STAMP): pyproject.toml
	$(PYTHON) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	netslim run demo --out runs/demo

test: $(STAMP)
	$(PYTHON) -m pytest -q

lint: $(STAMP)
	ruff check .

bench: $(STAMP)
	$(PYTHON) benchmarks/run_all.py --quick
