# Two entry points do all set-up on a fresh machine:
#   make bench   - the main job: the benchmark suite (CPU default, minutes)
#   make test    - the test suite
#   make lint    - ruff and the import layering contracts (pyproject.toml), as CI runs them
# Each creates $(VENV) if needed, installs torch first and only when it is absent (so pip never
# resolves a multi-GB CUDA build by itself), then the package with its extras, every version pinned by
# the committed lock (requirements/lock.txt): a release tomorrow cannot turn a fresh clone red.
#   make test-latest - the suite against the newest releases (a separate venv): what the next release breaks
#   make lock        - refresh the lock deliberately: test-latest, and only if it is green, pin what it ran
PYTHON ?= python3
VENV ?= .venv
VENV_FLAGS ?=
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
LOCK ?= requirements/lock.txt
LATEST_VENV ?= .venv-latest
LATEST_PY := $(LATEST_VENV)/bin/python
EXTRAS ?= test,bench,xformers
SUITE ?= cpu
OUT ?= gpu_out
GPU_PYTHON ?= python3
GPU_CHECK_ARGS ?=
BENCH_ARGS ?=
PYTEST_ARGS ?=

.PHONY: install test test-latest lock lint bench backends gpu-check gpu-check-dry clean

$(VENV)/.installed: setup.cfg pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -c $(LOCK) -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -n 2 tests $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

bench: $(VENV)/.installed
	$(PY) -m fast_timesformer.cli bench --suite $(SUITE) --overwrite $(BENCH_ARGS)

# The newest releases of every extra's packages (torch stays $(TORCH_SPEC): its install is special), in a
# venv of its own, then the suite. Red here and green in `make test` = a release to pin around.
test-latest:
	rm -rf $(LATEST_VENV) && $(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_PY) -m pip install "$(TORCH_SPEC)"
	$(LATEST_PY) -m pip freeze | grep -i -E '^(torch|nvidia-[a-z0-9-]+)==' > $(LATEST_VENV)/torch-pin.txt
	$(LATEST_PY) -m pip install --upgrade --upgrade-strategy eager -c $(LATEST_VENV)/torch-pin.txt -e ".[all]"
	$(LATEST_VENV)/bin/ruff check . && $(LATEST_VENV)/bin/lint-imports
	$(LATEST_PY) -m pytest -n 2 tests $(PYTEST_ARGS)

# Refresh the lock: every package of every extra (transitive ones included) at the versions test-latest
# just ran green together; torch is left to TORCH_SPEC. Review the diff, commit it with the result.
lock: test-latest
	mkdir -p $(dir $(LOCK))
	{ echo "# pip constraints: every package of every extra, as run green together by 'make lock' with $(TORCH_SPEC)"; \
	  echo "# on Python $$($(LATEST_PY) -c 'import platform; print(platform.python_version())'). torch is pinned by TORCH_SPEC."; \
	  $(LATEST_PY) -m pip freeze --exclude-editable | grep -v -i -E '^(torch|nvidia-[a-z0-9-]+|fast[-_]timesformer)==' \
	    | LC_ALL=C sort -f; } > $(LOCK).tmp && mv $(LOCK).tmp $(LOCK)

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
	rm -rf $(VENV) $(LATEST_VENV) *.egg-info .pytest_cache
