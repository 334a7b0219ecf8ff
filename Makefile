# The two set-up commands of the README. Each creates .venv on first use.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
DEMO    := .demo
# the oldest Ray release pyproject.toml allows (ray[data,default]>=2.55,<2.61); .venv gets the newest
RAY_OLDEST := 2.55.1
OLDEST  := .venv-ray-oldest
# left out on the oldest Ray, said here rather than skipped silently: the job runs faster there, so the
# first job of this timing-based test ends before the second one's second attempt (issue 23's note)
OLDEST_DESELECT := --deselect "tests/job/test_concurrency.py::test_a_second_job_on_a_busy_output_is_refused_in_one_line"

.PHONY: demo test test-ray-oldest lint venv clean

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

## test-ray-oldest: the Ray job and deploy tests again, on the oldest Ray ned-ray supports (CI runs it after `make test`);
## tests that run the job in process only (marked local_executor: no Ray in them) are not run twice
$(OLDEST)/bin/ned-ray: pyproject.toml
	$(PY) -m venv $(OLDEST)
	$(OLDEST)/bin/pip install -q --upgrade pip
	$(OLDEST)/bin/pip install -q -e ".[test]" "ray[data,default]==$(RAY_OLDEST)"
	touch $@

test-ray-oldest: $(OLDEST)/bin/ned-ray
	$(OLDEST)/bin/python -c "import ray; assert ray.__version__ == '$(RAY_OLDEST)', ray.__version__"
	$(OLDEST)/bin/python -m pytest -q tests/job tests/deploy -m "not local_executor" $(OLDEST_DESELECT)

## lint: ruff over the package, jobs, tests, benchmarks and examples (configured in pyproject.toml)
lint: venv
	$(BIN)/ruff check ned_ray jobs tests bench examples

clean:
	rm -rf $(DEMO) .pytest_cache
