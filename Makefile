# One command to install and run the main job, one to install and run the tests.
#   make demo   - install into .venv, then the centralized-vs-federated comparison on digits
#   make test   - install into .venv, then the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo quickstart federated test test-fast lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch resolves to a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/fedmia run configs/compare.yaml

quickstart: install
	$(BIN)/fedmia run configs/quickstart.yaml

federated: install
	$(BIN)/fedmia run configs/federated.yaml

# pytest exits 5 when it collects no test; that is not a failure of the code under test.
test: install
	$(BIN)/pytest -q -ra; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

test-fast: install
	$(BIN)/pytest -q -m "not slow"; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; fi; exit $$rc

lint: install
	$(BIN)/ruff check fedmia tests simulations benchmarks notebooks
	$(BIN)/ruff format --check fedmia tests simulations benchmarks notebooks

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .mypy_cache
