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

# The suite waits on clusters far more than it computes (1.6 cores busy on average at 4
# workers): it runs on JOBS pytest-xdist workers, each with a port range of its own
# (tests/conftest.py supports 4). On 2 cores the default suite took 518 s at 4 workers,
# 630 s at 3 and 832 s at 2. JOBS=0 runs it in this one process (pytest -s, pdb).
# -rs prints why any test skipped.
JOBS ?= 4

test: $(STAMP)
	$(PY) -m pytest -q -rs -n $(JOBS) --dist worksteal $(ARGS)

test-soak: $(STAMP)
	$(PY) -m pytest -q -rs -n $(JOBS) --dist worksteal --soak $(ARGS)

typecheck: $(STAMP)
	$(PY) -m mypy $(TYPED)

bench: $(STAMP)
	$(PY) bench/broker.py
	$(PY) bench/datanode.py
	$(PY) bench/mds.py
	$(PY) bench/put_get.py

clean:
	rm -rf $(VENV) build *.egg-info
