# Two commands a newcomer needs: `make demo` (the main job against the bundled emulators) and `make test`.
# Both build the virtualenv first, from PyPI, so they work on a fresh machine with Python 3.11+.
# `make airflow` is the real Airflow UI with the examples and the emulators; `make dist` builds the wheel.
PYTHON ?= python3
AIRFLOW_VERSION ?= 3.3.2
# Every Airflow version CI tests, newest first (`make upgrade-check` re-resolves each).
AIRFLOW_VERSIONS ?= 3.3.2 3.1.8
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(AIRFLOW_VERSION)
# The environment our tests passed in, pinned per Airflow and Python version as Airflow pins its own
# (constraints/README.md): a fresh machine builds that, whatever PyPI has published since.
PYTHON_MINOR := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
CONSTRAINTS ?= constraints/airflow-$(AIRFLOW_VERSION)-py$(PYTHON_MINOR).txt
UV_VERSION ?= 0.13.9
UV := $(PYTHON) -m uv
# The extras the test virtualenvs (and so the constraints files) hold.
export EXTRAS := test,s3,topology
# Azurite (Azure Storage's API server, npm) serves iTwin outputs in the tests, installed from
# constraints/azurite/package-lock.json (3.35, the last on Node.js < 21).
AZURITE := .tools/azurite/node_modules/.bin/azurite-blob

# `make airflow` keeps its Airflow (database, login, runs) here between runs; delete the folder to start afresh.
AIRFLOW_UI_HOME ?= .airflow_home

.PHONY: demo test lint unit venv uv azurite airflow dist bench bench-vendor-load topology clean constraints upgrade-check

uv:
	@[ "$$($(UV) --version 2>/dev/null | cut -d' ' -f2)" = "$(UV_VERSION)" ] || \
		$(PYTHON) -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

venv: $(STAMP)

# With the constraints file the virtualenv holds exactly the tested versions (`uv pip sync` also removes what is
# not listed), then the project itself; `uv pip check` fails if pyproject.toml asks for something the file lacks
# (then `make constraints`). Without a file for this Airflow and Python (REQUIRE_CONSTRAINTS=1 makes that an
# error, as in CI) it installs the newest allowed versions, which no test of ours has seen.
$(STAMP): pyproject.toml $(wildcard $(CONSTRAINTS)) constraints/build.txt | uv
	$(UV) venv --quiet --allow-existing --python $(PYTHON) $(VENV)
	@if [ -f $(CONSTRAINTS) ]; then \
		echo "$(VENV): Airflow $(AIRFLOW_VERSION) with the versions in $(CONSTRAINTS)"; \
		$(UV) pip sync --quiet --python $(BIN)/python -b constraints/build.txt $(CONSTRAINTS) && \
		$(UV) pip install --quiet --python $(BIN)/python -b constraints/build.txt --no-deps -e . && \
		$(UV) pip check --quiet --python $(BIN)/python; \
	elif [ -n "$(REQUIRE_CONSTRAINTS)" ]; then \
		echo "no $(CONSTRAINTS): run \`make constraints AIRFLOW_VERSION=$(AIRFLOW_VERSION)\`, then the tests"; exit 1; \
	else \
		echo "WARNING: no $(CONSTRAINTS): installing the newest allowed versions, untested here"; \
		$(UV) pip install --quiet --python $(BIN)/python -b constraints/build.txt -e ".[$(EXTRAS)]" \
			$(addprefix -c ,$(wildcard constraints/holds-airflow-$(basename $(AIRFLOW_VERSION)).txt)) \
			"apache-airflow==$(AIRFLOW_VERSION)"; \
	fi
	rm -f $(VENV)/.installed-*
	touch $@

# Resolve the constraints file for AIRFLOW_VERSION on this Python, keeping every pin it already has (only what a
# change to pyproject.toml needs moves); run the tests on it before committing. `make upgrade-check` moves them all.
constraints: uv
	constraints/resolve $(AIRFLOW_VERSION) $(CONSTRAINTS)

# On demand (about 40 minutes): resolve the newest versions pyproject.toml allows for each Airflow in
# AIRFLOW_VERSIONS, run CI's tests on them in throwaway virtualenvs, and rewrite each constraints file that passed.
upgrade-check: uv
	constraints/upgrade-check $(AIRFLOW_VERSIONS)

# Without npm the Azurite tests skip (CI sets JOBPROGRESS_REQUIRE_AZURITE=1, so there they fail instead).
azurite: $(AZURITE)

$(AZURITE): constraints/azurite/package.json constraints/azurite/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		mkdir -p .tools/azurite && cp constraints/azurite/package.json constraints/azurite/package-lock.json .tools/azurite/ && \
		npm ci --silent --no-audit --no-fund --prefix .tools/azurite && touch $@; \
	else echo "npm not found: tests that need Azurite will be skipped"; fi

demo: venv
	$(BIN)/python -m airflow_provider_jobprogress.testing.demo

# Emulators, their connections stored in Airflow, the example DAGs, `airflow standalone`; prints the address and
# login. Ctrl-C stops everything it started.
airflow: venv
	$(BIN)/python -m airflow_provider_jobprogress.testing.standalone --home $(AIRFLOW_UI_HOME)

# The sdist and the wheel, in dist/: `pip install dist/airflow_provider_jobprogress-*.whl` wherever Airflow runs.
dist: venv uv
	rm -rf dist
	$(UV) build --build-constraints constraints/build.txt --out-dir dist .

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy airflow_provider_jobprogress tests dags_examples benchmarks

# Two runs: the tests that start no Airflow component, on TEST_PROCESSES processes (pytest-xdist; most of them wait
# on sockets and sleeps, and each process has its own Airflow home and emulators), then the deployment, UI and
# topology tests one at a time (real Airflow components, timed by Airflow's own heartbeats: not beside others).
# MARKS: a marker expression both runs keep to (CI's second pass on the oldest Airflow leaves out the soak: it
# tests our transport, not Airflow); PYTEST_ARGS: more pytest arguments for both. The slowest tests are listed
# after each run: what to look at when CI grows.
TEST_PROCESSES ?= 2
MARKS ?=
PYTEST_ARGS ?=
COMPONENTS := deployment or browser or topology
only = $(if $(MARKS),($(MARKS)) and ,)
# Both runs go whatever the first found (CI's log shows every failure); pytest's exit status 5, "no tests
# collected", fails nothing when the other run ran tests (`PYTEST_ARGS=tests/test_budget.py` has none of the second
# kind), and fails when neither did. A `-m` in PYTEST_ARGS would replace the split's: use MARKS.
PYTEST = JOBPROGRESS_CONSTRAINTS=$(CONSTRAINTS) $(BIN)/python -m pytest -q --durations=20
unit: venv azurite
	@first=0; second=0; \
	$(PYTEST) -n $(TEST_PROCESSES) -m "$(only)not ($(COMPONENTS))" $(PYTEST_ARGS) || first=$$?; \
	$(PYTEST) -m "$(only)($(COMPONENTS))" $(PYTEST_ARGS) || second=$$?; \
	case "$$first $$second" in \
		"0 0"|"0 5"|"5 0") exit 0;; \
		"5 5") echo "make unit: no test ran"; exit 5;; \
		*) exit 1;; \
	esac

test: lint unit

# On demand, not in CI (about 10 minutes): the trigger benchmark of benchmarks/README.md
bench: venv
	$(BIN)/python benchmarks/bench_triggers.py

# On demand, not in CI (about 2 hours): what thousands of waits cost each vendor (issue 19), benchmarks/README.md
bench-vendor-load: venv
	$(BIN)/python benchmarks/bench_vendor_load.py

# On demand (about half an hour): the production topology (PostgreSQL, Redis, CeleryExecutor with two workers, two
# triggerers, api-server, scheduler, dag-processor, the emulators, moto's S3) and the full 300-job scenario, each
# check reported (tests/topology/). It installs Debian's postgresql and redis-server when missing. CI runs its
# short form (tests/test_topology.py).
topology: venv
	$(BIN)/python -m tests.topology

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .tools dist build
