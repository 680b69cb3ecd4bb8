# samplegrad — the two commands: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export OMP_NUM_THREADS ?= 2

.PHONY: install demo test bench bench-quick lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $(STAMP)

demo: install
	$(BIN)/samplegrad demo

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python -m samplegrad_bench.runners.speed
	$(BIN)/python -m samplegrad_bench.run_all

bench-quick: install
	$(BIN)/python -m samplegrad_bench.runners.speed --quick
	$(BIN)/python -m samplegrad_bench.run_all --quick

lint: install
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
