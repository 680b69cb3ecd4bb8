# samplegrad — the two commands: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export OMP_NUM_THREADS ?= 2

.PHONY: install demo test bench bench-quick lint docs clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $(STAMP)

# writes runs/demo/ only (gitignored); `samplegrad demo --publish` rewrites docs/results/demo/
demo: install
	$(BIN)/samplegrad demo

test: install
	$(BIN)/python -m pytest -q

# every `samplegrad bench NAME` in turn (run_all.py), outputs in runs/NAME/;
# `make bench BENCH_ARGS=--publish` rewrites the committed docs/results/ instead (hours)
BENCH_ARGS ?=

bench: install
	$(BIN)/python -m samplegrad_bench.run_all $(BENCH_ARGS)

bench-quick: install
	$(BIN)/python -m samplegrad_bench.run_all --quick

# the API reference and methods site, strict (a broken link or reference fails); output in runs/
DOCS_STAMP := $(VENV)/.docs-installed

$(DOCS_STAMP): pyproject.toml | $(STAMP)
	$(BIN)/pip install -q -e '.[docs]'
	touch $(DOCS_STAMP)

docs: install $(DOCS_STAMP)
	$(BIN)/mkdocs build --strict --site-dir runs/site

lint: install
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
