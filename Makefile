# Quick start: `make demo` runs the whole slimming pipeline on embedded data; `make test` runs the tests
# (and every code block of README.md and docs/); `make test-slow` runs the slower tier. Each makes the
# project's own environment first (.venv, with the system python3; see tools/setup-venv).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ZOO_VENV ?= .venv-zoo
ZOO_PY := $(ZOO_VENV)/bin/python
PYTEST := -m pytest -q -rs
# what needs the optional third-party packages; it runs in $(ZOO_VENV) once `make zoo` made it
ZOO_TESTS := tests/test_zoo.py tests/test_ultralytics.py tests/test_integrations.py tests/test_environment.py \
	README.md docs/ultralytics.md docs/lightning-timm.md

.PHONY: install zoo demo test test-slow lint bench

$(STAMP): pyproject.toml tools/setup-venv
	sh tools/setup-venv "$(PYTHON)" "$(VENV)"
	@touch $(STAMP)

install: $(STAMP)

zoo: pyproject.toml tools/setup-venv
	sh tools/setup-venv "$(PYTHON)" "$(ZOO_VENV)" zoo

demo: $(STAMP)
	$(VENV)/bin/netslim run demo --out runs/demo
	@echo "the netslim command is $(VENV)/bin/netslim: 'source $(VENV)/bin/activate' puts it on your PATH"

test: $(STAMP)
	$(PY) $(PYTEST) -m "not slow"
	@if [ -x "$(ZOO_PY)" ]; then echo "third-party models ($(ZOO_VENV)):"; \
	$(ZOO_PY) $(PYTEST) -m "not slow" $(ZOO_TESTS) \
	&& ZOO_OUT=$$(mktemp -d) && YOLO_OFFLINE=1 $(ZOO_PY) benchmarks/zoo.py --quick --out $$ZOO_OUT; \
	else echo "third-party model tests skipped: run 'make zoo' first to install timm, Ultralytics, smp..."; fi

test-slow: $(STAMP)
	$(PY) $(PYTEST) -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/run_all.py --quick
