# enrich: `make demo` to see it work, `make test` to test it. Everything installs into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
DEMO_PORT ?= 8787
export DEMO_CLIENT_ID ?= demo-client
export DEMO_CLIENT_SECRET ?= demo-secret-2f8a
# The key of the demo's second provider (configs/examples/waterfall.yaml asks it).
export DEMO_ALT_KEY ?= demo-alt-key-7d1e

.PHONY: install demo demo-server enrich test test-fast check lint format docs cog docs-check bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

## demo: start the bundled demo API, enrich sample_data/people.csv into out/, show the new columns
demo: $(STAMP)
	@mkdir -p out
	@$(BIN)/enrich demo-server --port $(DEMO_PORT) & server=$$!; \
	trap 'kill $$server 2>/dev/null' EXIT INT TERM; \
	$(PY) scripts/wait_for_port.py 127.0.0.1 $(DEMO_PORT) && \
	$(BIN)/enrich run configs/demo.yaml --preview 8

## demo-server: run the demo API in the foreground
demo-server: $(STAMP)
	$(BIN)/enrich demo-server --port $(DEMO_PORT)

## enrich: the target to schedule: make enrich CONFIG=my.yaml [INPUT=in.csv] [OUTPUT=out.parquet]
enrich: $(STAMP)
	@test -n "$(CONFIG)" || { echo "usage: make enrich CONFIG=path.yaml [INPUT=...] [OUTPUT=...]" >&2; exit 2; }
	$(BIN)/enrich run $(CONFIG) $(if $(INPUT),--input $(INPUT)) $(if $(OUTPUT),--output $(OUTPUT)) $(ARGS)

test: $(STAMP)
	$(BIN)/pytest -q

## test-fast: the inner loop: every test not marked slow (no redis-server, Dask or waits)
test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff format --check enrich tests scripts bench
	$(BIN)/ruff check enrich tests scripts bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format enrich tests scripts bench
	$(BIN)/ruff check --fix enrich tests scripts bench

## cog: rewrite the generated parts of docs/: the CLI reference (--help), the config reference
## (enrich.schema.config_schema()), the bench figures (bench/results/) and the module list
cog: $(STAMP)
	$(BIN)/cog -r -I scripts docs/*.md

## docs: regenerate, then build the docs site into site/
docs: cog
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

## docs-check: the generated parts are up to date and the site builds with no warning
docs-check: $(STAMP)
	$(BIN)/cog --check --check-fail-msg='run `make cog`' -I scripts docs/*.md
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

## check: the one gate: format, lint, types, docs, tests
check: lint docs-check test

## bench: speed against a bare aiohttp loop, rate-limit precision, journal cost, start-up
## (bench/throughput.py, ~5 min), 1, 2 and 4 shard processes under one limit shared through
## redis-server (bench/scaleout.py, ~2 min), a chain of steps each under its own limit, pipelined,
## and 1, 2 and 3 steps unlimited (bench/steps.py, ~2 min), then peak RSS at 100k and 1M rows
## (bench/memory.py, ~5 min)
bench: $(STAMP)
	@# Byte-compiled as a normal install is (PYTHONDONTWRITEBYTECODE would make every start compile).
	$(PY) -m compileall -q enrich bench
	$(PY) bench/throughput.py
	$(PY) bench/scaleout.py
	$(PY) bench/steps.py
	$(PY) bench/memory.py

clean:
	rm -rf $(VENV) out site .pytest_cache .mypy_cache .ruff_cache bench/.data
