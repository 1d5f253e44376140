# The two set-up commands of the README are `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: build run test lint bench clean

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=77" wheel
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# Compile the Cython extensions in place (pip install -e builds them once; this rebuilds after edits).
build: $(STAMP)
	$(PY) setup.py -q build_ext --inplace

run: build
	$(PY) -m gateway dev run --config examples/gateway.yaml

test: build
	$(PY) -m pytest tests -q

lint: build
	$(VENV)/bin/ruff check gateway _fastpath tests bench scripts

# The last run gives the gateway a core of its own, as it is deployed (it needs two CPUs).
bench: build
	$(PY) -m pytest bench/bench_*.py -q --benchmark-only
	$(PY) bench/json_reference.py
	$(PY) bench/e2e.py
	$(PY) bench/e2e_masking.py
	if [ "$$(nproc)" -ge 2 ]; then $(PY) bench/e2e_masking.py --pin-gateway; fi

clean:
	rm -rf build _fastpath/*.c _fastpath/*.so
