import os
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
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
