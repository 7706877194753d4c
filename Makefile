# Two commands a newcomer needs: `make demo` (the main job against the bundled emulators) and `make test`.
# Both build the virtualenv first, from PyPI, so they work on a fresh machine with Python 3.11+.
PYTHON ?= python3
AIRFLOW_VERSION ?= 3.3.2
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(AIRFLOW_VERSION)

.PHONY: demo test lint unit venv clean bench

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m pip install --quiet --disable-pip-version-check uv
	$(PYTHON) -m uv venv --quiet --allow-existing --python $(PYTHON) $(VENV)
	$(PYTHON) -m uv pip install --quiet --python $(BIN)/python -e ".[test]" "apache-airflow==$(AIRFLOW_VERSION)"
	rm -f $(VENV)/.installed-*
	touch $@

demo: venv
	$(BIN)/python -m airflow_provider_jobprogress.testing.demo

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy airflow_provider_jobprogress tests dags_examples benchmarks

unit: venv
	$(BIN)/python -m pytest -q

test: lint unit

# On demand, not in CI (about 10 minutes): the trigger benchmark of benchmarks/README.md
bench: venv
	$(BIN)/python benchmarks/bench_triggers.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
