# imageforge: two commands on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install serve test lint typecheck pytest bench bench-upstream bench-queue clean

install: $(STAMP)

# Reinstall only when the project's metadata changes; `make install` is idempotent.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "imageforge needs Python 3.11 or newer")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,postgres,openai,redis]'
	@touch $(STAMP)

serve: install
	$(BIN)/imageforge serve --host $(HOST) --port $(PORT)

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test: lint typecheck pytest

# Each benchmark prints one JSON report on stdout.
bench: install
	$(BIN)/python bench/api.py

bench-upstream: install
	$(BIN)/python bench/upstream.py

bench-queue: install
	$(BIN)/python bench/queue_bench.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
