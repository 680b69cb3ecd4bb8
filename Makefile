# samplegrad — the two commands: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export OMP_NUM_THREADS ?= 2

.PHONY: install demo test bench bench-quick lint docs mutation clean

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

# mutation testing of the library core with mutmut (docs/mutation.md; not part of `make test`,
# 2-3 hours on 2 cores). Runs in a scratch copy, runs/mutation/, whose mutants/ caches the
# verdicts between runs; MUTANTS='samplegrad.diffusion*' limits (and reruns) one module.
MUTATION_DIR  := runs/mutation
MUTATION_JOBS ?= 1
MUTANTS       ?=

define MUTATION_SCORES
import collections, glob, json
killed = {1, 3, 24, -24, 152, 255, 36}  # mutmut: a failing test, or a timeout
rows = collections.defaultdict(collections.Counter)
for meta in glob.glob("mutants/src/samplegrad/*/*.py.meta"):
    for code in json.load(open(meta))["exit_code_by_key"].values():
        status = "killed" if code in killed else {0: "survived", 33: "no tests", None: "not run"}.get(code, "other")
        rows[meta.split("/")[3]][status] += 1
for module, c in sorted(rows.items()):
    done = c["killed"] + c["survived"] + c["no tests"]
    print(f"{module:12s} killed {c['killed']:5d}  survived {c['survived']:4d}  no tests {c['no tests']:4d}"
          f"  not run {c['not run']:4d}  score {100 * c['killed'] / max(done, 1):5.1f}%")
endef
export MUTATION_SCORES

mutation: install
	mkdir -p $(MUTATION_DIR) && rm -rf $(MUTATION_DIR)/src $(MUTATION_DIR)/tests
	cp -r src tests pyproject.toml $(MUTATION_DIR)/
	cd $(MUTATION_DIR) && $(CURDIR)/$(BIN)/mutmut run --max-children $(MUTATION_JOBS) $(MUTANTS); \
	  $(CURDIR)/$(BIN)/python -c "$$MUTATION_SCORES"

lint: install
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
