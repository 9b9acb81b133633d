# `make demo` and `make test` set everything up on a fresh machine (a virtualenv in .venv) first.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.edgekd-installed

.PHONY: demo readme test fast-test lint clean

demo: $(INSTALLED)  ## distil, export and benchmark the bundled quickstart recipe into runs/quickstart
	$(BIN)/edgekd run recipes/quickstart.yaml --overwrite

readme: demo  ## regenerate the README's report excerpt from runs/quickstart
	$(BIN)/python benchmarks/suite/readme_excerpt.py runs/quickstart

test: $(INSTALLED)  ## the whole suite, slow end-to-end tests included (what CI runs)
	$(BIN)/python -m pytest

fast-test: $(INSTALLED)
	$(BIN)/python -m pytest -m "not slow"

lint: $(INSTALLED)
	$(BIN)/ruff check edgekd exporters benchmarks tests

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --editable '.[dev]'
	touch $@

clean:
	rm -rf $(VENV) runs build *.egg-info
