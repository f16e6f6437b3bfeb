# Quick start (a fresh machine with Python 3.11):
#   make main   -> creates .venv, installs the project, runs `mlflow run . -e main --env-manager local`
#   make test   -> creates .venv, installs the project with test extras and the system programs the tests
#                  start (scripts/system-deps: Chromium, PostgreSQL), runs the whole test suite;
#                  make test TEST_MARKERS="not browser" runs it without the browser tests (and without Chromium)
#   make ui     -> serves the MLflow UI on the local store and prints the link to our runs
#   make screenshots -> the documentation's UI screenshots, from the newest `main` of the local store
#   make tutorial -> runs every tutorial notebook with its full settings and writes tutorial/RESULTADOS.md
#   make benchmark-peers -> installs the optional extra (torch 2.10.0, IBM aihwkit 1.1.0, aihwkit-lightning 2.1.0:
#                  gigabytes) and measures the benchmark's side by side with them (docs/performance.md)
PYTHON ?= python3
VENV ?= .venv
BIN := $(CURDIR)/$(VENV)/bin
RUN_IN_VENV := PATH="$(BIN):$$PATH"
EXPERIMENT ?= hardware-aware-larq
TEST_MARKERS ?=
# a group of tests deselected by TEST_MARKERS needs no program of its own
WITHOUT := $(if $(findstring not browser,$(TEST_MARKERS)),--without browser) $(if $(findstring not postgres,$(TEST_MARKERS)),--without postgres)
PYTEST := python -m pytest -n auto --dist worksteal --durations=15

.PHONY: install main test test-fast ui screenshots tutorial benchmark-peers

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

main: install
	$(RUN_IN_VENV) mlflow run . -e main --env-manager local --experiment-name $(EXPERIMENT)

test: install
	scripts/system-deps $(WITHOUT)
	$(RUN_IN_VENV) ruff check .
	$(RUN_IN_VENV) $(PYTEST) $(if $(TEST_MARKERS),-m "$(TEST_MARKERS)")

test-fast: install
	$(RUN_IN_VENV) $(PYTEST) -m "not slow and not browser and not postgres"

ui: install
	@MLFLOW_TRACKING_URI=sqlite:///mlflow.db $(BIN)/python -m pipeline.app.ui http://127.0.0.1:5000 $(EXPERIMENT)
	$(RUN_IN_VENV) mlflow ui --backend-store-uri sqlite:///mlflow.db --port 5000

screenshots: install
	$(RUN_IN_VENV) python tests/screenshots.py sqlite:///mlflow.db $(EXPERIMENT) docs

tutorial: install
	$(RUN_IN_VENV) python tutorial/resultados.py

# aihwkit-lightning pins torch 2.13.0, aihwkit's compiled part needs 2.10.0: lightning (pure Python) without its deps
benchmark-peers: install
	$(BIN)/python -m pip install --quiet -e ".[peers]"
	$(BIN)/python -m pip install --quiet --no-deps aihwkit-lightning==2.1.0
	$(RUN_IN_VENV) python -m benchmarks.run --only peers
