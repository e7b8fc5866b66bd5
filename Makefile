# Two entry points do all set-up on a fresh machine:
#   make bench   - the main job: the benchmark suite (CPU default, minutes)
#   make test    - the test suite
# Each creates $(VENV) if needed, installs torch first and only when it is absent (so pip never
# resolves a multi-GB CUDA build by itself), then the package with its extras.
PYTHON ?= python3
VENV ?= .venv
VENV_FLAGS ?=
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= test,bench,xformers
SUITE ?= cpu
BENCH_ARGS ?=
PYTEST_ARGS ?=

.PHONY: install test bench backends clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -n 2 tests $(PYTEST_ARGS)

bench: $(VENV)/.installed
	$(PY) -m fast_timesformer.cli bench --suite $(SUITE) $(BENCH_ARGS)

backends: $(VENV)/.installed
	$(PY) -m fast_timesformer.cli backends

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
