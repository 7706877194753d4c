# Two commands a newcomer needs: `make demo` (the main job against the bundled emulators) and `make test`.
# Both build the virtualenv first, from PyPI, so they work on a fresh machine with Python 3.11+.
# `make airflow` is the real Airflow UI with the examples and the emulators; `make dist` builds the wheel.
PYTHON ?= python3
AIRFLOW_VERSION ?= 3.3.2
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(AIRFLOW_VERSION)
# Azurite (Azure Storage's API server, npm) serves iTwin outputs in the tests; 3.35 is the last on Node.js < 21.
AZURITE_VERSION ?= 3.35.0
AZURITE := .tools/azurite/node_modules/.bin/azurite-blob

# `make airflow` keeps its Airflow (database, login, runs) here between runs; delete the folder to start afresh.
AIRFLOW_UI_HOME ?= .airflow_home

.PHONY: demo test lint unit venv azurite airflow dist bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m pip install --quiet --disable-pip-version-check uv
	$(PYTHON) -m uv venv --quiet --allow-existing --python $(PYTHON) $(VENV)
	$(PYTHON) -m uv pip install --quiet --python $(BIN)/python -e ".[test,s3]" "apache-airflow==$(AIRFLOW_VERSION)"
	rm -f $(VENV)/.installed-*
	touch $@

# Without npm the Azurite tests skip (CI sets JOBPROGRESS_REQUIRE_AZURITE=1, so there they fail instead).
azurite:
	@if [ -x $(AZURITE) ]; then :; \
	elif command -v npm >/dev/null 2>&1; then \
		npm install --silent --no-audit --no-fund --prefix .tools/azurite azurite@$(AZURITE_VERSION); \
	else echo "npm not found: tests that need Azurite will be skipped"; fi

demo: venv
	$(BIN)/python -m airflow_provider_jobprogress.testing.demo

# Emulators, their connections stored in Airflow, the example DAGs, `airflow standalone`; prints the address and
# login. Ctrl-C stops everything it started.
airflow: venv
	$(BIN)/python -m airflow_provider_jobprogress.testing.standalone --home $(AIRFLOW_UI_HOME)

# The sdist and the wheel, in dist/: `pip install dist/airflow_provider_jobprogress-*.whl` wherever Airflow runs.
dist: venv
	rm -rf dist
	$(PYTHON) -m uv build --out-dir dist .

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy airflow_provider_jobprogress tests dags_examples benchmarks

unit: venv azurite
	$(BIN)/python -m pytest -q

test: lint unit

# On demand, not in CI (about 10 minutes): the trigger benchmark of benchmarks/README.md
bench: venv
	$(BIN)/python benchmarks/bench_triggers.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .tools dist build
