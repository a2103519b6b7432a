# imageforge: two commands on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
TORCH_VERSION ?= 2.13.0
# Test processes: most tests wait on servers of their own, so two share two cores well
# (the whole suite: 435 s on two processes on a 2-core machine).
PYTEST_WORKERS ?= 2

.PHONY: install serve test lint typecheck pytest bench bench-upstream bench-queue bench-diffusion bench-storage clean

install: $(STAMP)

# Reinstall only when the project's metadata changes; `make install` is idempotent.
$(STAMP): pyproject.toml clients/python/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "imageforge needs Python 3.11 or newer")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# torch first and pinned, so that the `local` extra's loose torch>=2.4 is already met and
	@# pip never fetches a multi-gigabyte CUDA build.
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e clients/python
	$(BIN)/python -m pip install --quiet -e '.[dev,postgres,openai,relay,redis,local,s3,tracing]'
	@touch $(STAMP)

serve: install
	$(BIN)/imageforge serve --host $(HOST) --port $(PORT)

lint: install
	$(BIN)/ruff check src tests bench clients/python
	$(BIN)/ruff format --check src tests bench clients/python

typecheck: install
	$(BIN)/mypy
	cd clients/python && $(abspath $(BIN))/mypy

# -rs: a skipped test says why and how to enable it (PostgreSQL, Chromium).
pytest: install
	$(BIN)/python -m pytest -q -rs -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

test: lint typecheck pytest

# Each benchmark prints one JSON report on stdout; `make bench` keeps them in bench/out/ and
# writes bench/REPORT.md from them (the PostgreSQL runs are skipped without a server).
BENCH_OUT ?= bench/out

bench: install
	@mkdir -p $(BENCH_OUT)
	$(BIN)/python bench/api.py > $(BENCH_OUT)/api.json
	$(BIN)/python bench/upstream.py > $(BENCH_OUT)/upstream.json
	-$(BIN)/python bench/upstream.py --postgres > $(BENCH_OUT)/upstream-postgres.json
	$(BIN)/python bench/report.py $(BENCH_OUT)/api.json $(BENCH_OUT)/upstream.json \
		$(BENCH_OUT)/upstream-postgres.json > bench/REPORT.md
	@cat bench/REPORT.md

bench-upstream: install
	$(BIN)/python bench/upstream.py

bench-queue: install
	$(BIN)/python bench/queue_bench.py

bench-diffusion: install
	$(BIN)/python bench/diffusion.py

bench-storage: install
	$(BIN)/python bench/storage.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
