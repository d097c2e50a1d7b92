# The two commands of the README: `make demo` and `make test`. Each sets up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# CPU torch first, pinned through a constraints file, so pip never pulls the CUDA build.
PIP := PIP_CONSTRAINT=constraints.txt $(PY) -m pip install -q --disable-pip-version-check

.PHONY: setup demo test test-fast lint format docs clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/armed-bio demo --out demo_output --threads 1

LINTED := armed_bio tests benchmarks data tutorials docs

# Everything: lint, format check and the whole suite (real-data tests included).
test: lint
	$(PY) -m pytest -q -p no:cacheprovider

# The edit loop: unit tests only (no real data, no end-to-end runs), about a minute.
test-fast: setup
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow"

# The documentation site (offline; warnings are errors): docs/_build/html/index.html.
docs: setup
	$(VENV)/bin/sphinx-build -q -W --keep-going -b html docs docs/_build/html

lint: setup
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)

format: setup
	$(VENV)/bin/ruff check --fix $(LINTED)
	$(VENV)/bin/ruff format $(LINTED)

clean:
	rm -rf $(VENV) demo_output docs/_build docs/tutorials docs/api/generated
