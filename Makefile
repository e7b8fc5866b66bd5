# Two entry points do all set-up on a fresh machine:
#   make bench   - the main job: the benchmark suite (CPU default, minutes)
#   make test    - the test suite
#   make lint    - ruff and the import layering contracts (pyproject.toml), as CI runs them
# Each creates $(VENV) if needed, installs torch first and only when it is absent (so pip never
# resolves a multi-GB CUDA build by itself), then the package with its extras.
PYTHON ?= python3
VENV ?= .venv
VENV_FLAGS ?=
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= test,bench,xformers
SUITE ?= cpu
OUT ?= gpu_out
GPU_PYTHON ?= python3
GPU_CHECK_ARGS ?=
BENCH_ARGS ?=
PYTEST_ARGS ?=

.PHONY: install test lint bench backends gpu-check gpu-check-dry clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -n 2 tests $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

bench: $(VENV)/.installed
	$(PY) -m fast_timesformer.cli bench --suite $(SUITE) $(BENCH_ARGS)

backends: $(VENV)/.installed
	$(PY) -m fast_timesformer.cli backends

# On a lent GPU machine (bare, no network; its python3 holds torch and triton, left untouched):
# install offline and run every stage within its time budget; at most 8 files in $(OUT). docs/gpu.md.
gpu-check:
	PYTHON=$(GPU_PYTHON) bash tools/gpu_check.sh $(OUT) $(GPU_CHECK_ARGS)

# The same stages on CPU at tiny sizes (kernels under TRITON_INTERPRET=1): what make test runs.
gpu-check-dry: $(VENV)/.installed
	$(PY) -m fast_timesformer.cli gpu-check --dry-run --out $(OUT) $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
