"""Where a backend runs on this machine, for tests that run every registered backend."""
import pytest
import torch

from fast_timesformer import get_backend


def device_for(backend, dtype=torch.float32):
    """Where ``backend`` runs here: CPU if it takes CPU tensors (triton under TRITON_INTERPRET=1), else
    CUDA (xformers, compiled triton on a GPU machine); skips with the backend's reasons otherwise."""
    be = get_backend(backend)
    reasons = {}
    for dev in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        q = torch.zeros(1, 2, 3, 8, device=dev, dtype=dtype)
        reasons[dev] = be.why_not(q, q, q, dropout_p=0.0, needs_grad=False)
        if not reasons[dev]:
            return torch.device(dev)
    pytest.skip(f"{backend}: {reasons}")
