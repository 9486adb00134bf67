# One command to install and run the main job, one to install and run the tests.
#   make demo   - install into .venv, then the centralized-vs-federated comparison on digits
#   make test   - install into .venv, then the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo quickstart federated test test-fast lint docs clean

# The exact tested set: constraints.txt pins every package (pyproject.toml holds the supported ranges).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, at its pin: with no torch installed pip resolves one to a multi-GB CUDA build
	$(BIN)/pip install -q -c constraints.txt torch
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/fedmia run compare

quickstart: install
	$(BIN)/fedmia run quickstart

federated: install
	$(BIN)/fedmia run federated

# Two pytest-xdist workers (one torch thread each, tests/conftest.py): each module stays on one worker; the
# modules that start Ray form two units (one on the worker's session runtime, one with Ray in processes of its
# own, a multi-node `ray start` cluster included) that run side by side, and the longest units are handed out
# first (tests/conftest.py). pytest exits 5 when it collects no test; that is not a failure of the code under test.
PYTEST_WORKERS ?= 2
test: install
	$(BIN)/pytest -q -ra -n $(PYTEST_WORKERS) --durations=25; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; fi; exit $$rc

# The edit-test loop: no test marked slow (no Ray, no federation on Flower's engine, no subprocess runs).
test-fast: install
	$(BIN)/pytest -q -m "not slow" -n $(PYTEST_WORKERS); rc=$$?; if [ $$rc -eq 5 ]; then exit 0; fi; exit $$rc

lint: install
	$(BIN)/ruff check fedmia tests simulations benchmarks notebooks examples
	$(BIN)/ruff format --check fedmia tests simulations benchmarks notebooks examples

# The documentation site (mkdocs.yml, docs/): the docs extra under the pins, then a strict build into site/
# (git-ignored) that fails on a broken link, a missing page or an API reference that does not resolve.
docs: install
	$(BIN)/pip install -q -c constraints.txt -e ".[docs]"
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .mypy_cache
