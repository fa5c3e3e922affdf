# Set-up and everyday commands. Each target creates .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
DEMO_STAMP := $(VENV)/.installed

.PHONY: demo test bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# The demo needs runhouse alone, not the test and lint tools.
$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/python examples/quickstart.py

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=25 tests

bench: $(STAMP)
	$(BIN)/python bench/calls.py
	$(BIN)/python bench/den.py
	$(BIN)/python bench/data.py
	$(BIN)/python bench/multinode.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/coldstart.py

lint: $(STAMP)
	$(BIN)/ruff check runhouse tests bench examples scripts
	$(BIN)/mypy runhouse

clean:
	rm -rf $(VENV) build *.egg-info
