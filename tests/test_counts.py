"""Counted cost of a training step (deterministic, no timing): ours vs Hugging Face at the same config."""
import pytest
import torch

from fast_timesformer.bench.counts import OpCounter, count_training_step
from fast_timesformer.bench.workloads import Workload

SMALL = dict(frames=4, image_size=32, patch_size=8, dim=64, depth=2, heads=4)  # 16 patches per frame


@pytest.fixture(scope="module")
def small_counts():
    pytest.importorskip("transformers")
    w = Workload(impl="ours", num_classes=400, **SMALL)
    return {"ours": count_training_step(w), "hf": count_training_step(w.replace(impl="hf"))}


def test_counter_sees_gemms_and_copies():
    a = torch.randn(8, 4)
    w = torch.nn.Linear(4, 3)
    with OpCounter() as c:
        w(a)
        a.t().contiguous()
        torch.cat([a, a])
    s = c.summary()
    assert s["addmm"] == 1
    assert s["copy_bytes_by_op"] == {"clone": 8 * 4 * 4, "cat": 16 * 4 * 4}


def test_no_more_gemm_calls_than_hugging_face(small_counts):
    ours, hf = small_counts["ours"], small_counts["hf"]
    assert "ours copied into HF" in " ".join(hf["notes"])  # the same weights, so the same model
    assert ours["gemm_calls"] <= hf["gemm_calls"], (ours["gemm_calls"], hf["gemm_calls"])


def test_at_most_half_the_bytes_copied_of_hugging_face(small_counts):
    ours, hf = small_counts["ours"], small_counts["hf"]
    assert ours["copy_bytes"] <= 0.5 * hf["copy_bytes"], (ours["copy_bytes_by_op"], hf["copy_bytes_by_op"])


def test_ddp_asks_for_the_unused_parameter_search_only_when_a_parameter_is_unused():
    """find_unused_parameters costs a traversal of the autograd graph every step: only where needed."""
    from fast_timesformer.models import TimeSformer
    from fast_timesformer.train.distributed import unused_parameters

    video = torch.randn(1, 2, 3, 32, 32)
    for scheme in ("divided_space_time", "space_only", "axial"):
        model = TimeSformer(num_classes=3, num_frames=2, image_size=32, patch_size=16, dim=32, depth=1, heads=2,
                            scheme=scheme).train()
        assert unused_parameters(model, video) == [], scheme
        assert model.training
    model = TimeSformer(num_classes=3, num_frames=2, image_size=32, patch_size=16, dim=32, depth=1, heads=2,
                        backend="fastformer")
    model.set_backend("regular")  # fastformer's own parameters stay, unused
    unused = unused_parameters(model, video)
    assert unused and all(".cores.fastformer." in n for n in unused)
