# The two set-up commands of the README. Each creates .venv on first use.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
DEMO    := .demo

.PHONY: demo test lint venv clean

$(BIN)/ned-ray: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $@

venv: $(BIN)/ned-ray

## demo: build the demo models and encode the built-in images with every model
demo: venv
	$(BIN)/ned-ray demo --workdir $(DEMO)

## test: the whole test suite (CPU; fixtures from ../shared)
test: venv
	$(BIN)/python -m pytest -q tests

## lint: ruff over the package, jobs, tests, benchmarks and examples (configured in pyproject.toml)
lint: venv
	$(BIN)/ruff check ned_ray jobs tests bench examples

clean:
	rm -rf $(DEMO) .pytest_cache
