import os
import signal
import sys

# Triton kernels run under Triton's CPU interpreter in tests when no GPU is present. The variable must be
# set before anything imports triton or our kernels (collection imports every test module first), so it
# is decided here, once per process, not inside a test module.
if "TRITON_INTERPRET" not in os.environ:
    import torch as _torch

    if not _torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

# Under pytest-xdist (make test runs -n 2 on 2 cores) each worker gets one intra-op thread: two workers
# with two threads each oversubscribe the cores and slow everything down several-fold.
# FAST_TIMESFORMER_TEST_THREADS=N overrides it: the suite must pass with any thread count (a float32
# tolerance that holds for one reduction order only is a defect), so run it with 1 and with 2.
if os.environ.get("FAST_TIMESFORMER_TEST_THREADS"):
    torch.set_num_threads(int(os.environ["FAST_TIMESFORMER_TEST_THREADS"]))
elif os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

# Hypothesis: the same examples on every run and machine (no example database, no random draw), so a
# failure is reproducible and the suite does not flake; pytest-randomly's seed does not change them.
try:
    from hypothesis import settings as _hsettings

    _hsettings.register_profile("fast_timesformer", derandomize=True, database=None, print_blob=True)
    _hsettings.load_profile("fast_timesformer")
except ImportError:  # pragma: no cover
    pass


def pytest_terminal_summary(terminalreporter, config):
    # pytest-randomly prints the seed in the header, which -q hides: say it again at the end, always.
    seed = getattr(config.option, "randomly_seed", None)
    if seed is not None and config.get_verbosity() < 0:
        terminalreporter.write_line(f"Using --randomly-seed={seed}")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def _registries():
    from fast_timesformer import schemes
    from fast_timesformer.backends import registry as backends
    from fast_timesformer.models import registry as models

    return {"backend": backends._REGISTRY, "model": models._MODELS, "scheme": schemes.SCHEMES}


def _device_context():
    """The global set_default_device mode, if any: set_default_device(cpu) pushes a function mode even
    though get_default_device() reads cpu either way (torch.compile then cannot trace)."""
    return getattr(getattr(torch, "_GLOBAL_DEVICE_CONTEXT", None), "device_context", None)


# set by pytest itself, and by torch the first time anything compiles (once per process, harmless)
_ENV_SET_BY_OTHERS = {"PYTEST_CURRENT_TEST", "TORCHINDUCTOR_CACHE_DIR", "_TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR"}


@pytest.fixture(autouse=True)
def _no_leaked_state():
    """Tests must pass in any order (pytest-randomly): a test that changes process-wide state and does not
    put it back fails here, after the state is restored so that the tests after it are unaffected."""
    before = dict(
        dtype=torch.get_default_dtype(), device=_device_context(), threads=torch.get_num_threads(),
        grad=torch.is_grad_enabled(), deterministic=torch.are_deterministic_algorithms_enabled(),
        cwd=os.getcwd(), env=dict(os.environ),
        signals={s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)},
        registries={k: dict(v) for k, v in _registries().items()},
    )
    yield
    leaked = []
    if torch.get_default_dtype() != before["dtype"]:
        leaked.append(f"default dtype {torch.get_default_dtype()}")
        torch.set_default_dtype(before["dtype"])
    if _device_context() is not before["device"]:
        leaked.append(f"default device context {_device_context()}")
        torch.set_default_device(None if before["device"] is None else before["device"].device)
    if torch.get_num_threads() != before["threads"]:
        leaked.append(f"{torch.get_num_threads()} threads")
        torch.set_num_threads(before["threads"])
    if torch.is_grad_enabled() != before["grad"]:
        leaked.append("grad mode")
        torch.set_grad_enabled(before["grad"])
    if torch.are_deterministic_algorithms_enabled() != before["deterministic"]:
        leaked.append("deterministic algorithms")
        torch.use_deterministic_algorithms(before["deterministic"])
    for sig, handler in before["signals"].items():
        if signal.getsignal(sig) is not handler:
            leaked.append(f"{signal.Signals(sig).name} handler {signal.getsignal(sig)}")
            signal.signal(sig, handler)
    if os.getcwd() != before["cwd"]:
        leaked.append(f"cwd {os.getcwd()}")
        os.chdir(before["cwd"])
    changed = sorted(k for k in set(os.environ) | set(before["env"])
                     if os.environ.get(k) != before["env"].get(k) and k not in _ENV_SET_BY_OTHERS)
    if changed:
        leaked.append(f"environment variables {changed}")
        for k in changed:
            if k in before["env"]:
                os.environ[k] = before["env"][k]
            else:
                del os.environ[k]
    for kind, reg in _registries().items():
        old = before["registries"][kind]
        # the built-in entries are all registered when the package is imported, so any change is the test's
        bad = sorted(k for k in set(old) | set(reg) if reg.get(k) is not old.get(k))
        if bad:
            leaked.append(f"{kind} registry entries {bad}")
            reg.clear()
            reg.update(old)
    assert not leaked, "the test left process-wide state behind: " + "; ".join(leaked)
