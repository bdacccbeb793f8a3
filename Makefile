# The README's two commands: `make demo` and `make test`. Everything else is set up by them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the suite mostly waits on real intervals: three workers on two cores (each its own PostgreSQL);
# tests/conftest.py keeps the CPU-heavy tests on one worker and gives timed end-to-end tests a rerun
PYTEST_WORKERS ?= 3

.PHONY: install demo test lint types docs pytest pytest-pg-store bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,demo]'
	touch $(STAMP)

# the documentation site, served by `querywatch serve` at /docs/ (package data, git-ignored);
# install builds it leniently so a doc warning never blocks the demo, `make docs` strictly
DOCS_SITE := querywatch/web/docs_site
MKDOCS := NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --quiet --site-dir $(DOCS_SITE)

$(DOCS_SITE)/index.html: $(STAMP) mkdocs.yml $(wildcard docs/*.md docs/*/*.md docs/*/*/*.md)
	$(MKDOCS)

install: $(STAMP) $(DOCS_SITE)/index.html

docs: install
	$(MKDOCS) --strict

demo: install
	$(BIN)/querywatch demo

lint: install
	$(BIN)/ruff check querywatch tests bench
	$(BIN)/ruff format --check querywatch tests bench

types: install
	$(BIN)/mypy

pytest: install
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup

test: lint types docs pytest

# the whole suite with every store on PostgreSQL (QW_TEST_STORE, see tests/conftest.py); `make test`
# runs only the store tests on both engines, to stay within CI's time
pytest-pg-store: install
	QW_TEST_STORE=postgresql $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup

bench: install
	$(BIN)/python bench/collector.py
	$(BIN)/python bench/detect.py
	$(BIN)/python bench/diagnose.py
	$(BIN)/python bench/store.py
	$(BIN)/python bench/fingerprint.py
	$(BIN)/python bench/loadtest.py
	$(BIN)/python bench/web.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache $(DOCS_SITE)
