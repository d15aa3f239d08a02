# Two commands matter: `make run` starts a local cluster, `make test` runs the test suite.
# Each creates .venv when it is missing and installs the project into it.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TYPED  := broker mds datanode client viz run_cluster.py

.PHONY: run test test-soak typecheck bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) run_cluster.py $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

test-soak: $(STAMP)
	$(PY) -m pytest -q --soak $(ARGS)

typecheck: $(STAMP)
	$(PY) -m mypy $(TYPED)

bench: $(STAMP)
	$(PY) bench/broker.py
	$(PY) bench/datanode.py
	$(PY) bench/mds.py
	$(PY) bench/put_get.py

clean:
	rm -rf $(VENV) build *.egg-info
