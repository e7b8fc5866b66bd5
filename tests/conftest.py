import os
import sys

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
