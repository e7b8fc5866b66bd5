"""A scheme and a backend registered from user code (here: test code) work everywhere, with no edit to the
package: models, training, the command line and the tests' parametrisation. Also runs README's
"Adding a backend or a scheme" snippets as written."""
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from fast_timesformer import (
    GenerativeTimeSformer,
    Scheme,
    Step,
    TimeSformer,
    get_scheme,
    list_backends,
    list_schemes,
    register_scheme,
    scheme_color,
    unregister_backend,
    unregister_scheme,
)
from fast_timesformer.schemes import joint_groups, step_groups, time_groups

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def time_then_joint():
    """A scheme the package does not know: attention along time, then over the whole clip."""
    scheme = register_scheme(Scheme(
        "time_then_joint", "T+ST", (Step("time", "temporal", time_groups), Step("joint", "", joint_groups)),
        description="time, then joint"))
    yield scheme.name
    unregister_scheme(scheme.name)


def test_registered_scheme_is_data_everywhere(time_then_joint):
    s = get_scheme(time_then_joint)
    assert time_then_joint in list_schemes() and s.short == "T+ST"
    assert scheme_color(time_then_joint) not in {scheme_color(n) for n in list_schemes() if n != time_then_joint}
    assert [m for step in s.steps for m in step.modules if m] == [
        "temporal_norm1", "temporal_attn", "temporal_fc", "norm1", "attn"]
    groups = dict(step_groups(time_then_joint, 4, (2, 3)))
    assert (groups["time"].num_groups, groups["time"].seq_len) == (6, 4)
    assert (groups["joint"].num_groups, groups["joint"].seq_len) == (1, 24)
    assert s.reasons(4, 3) == []


def test_registered_scheme_runs_forward_and_backward(time_then_joint):
    torch.manual_seed(0)
    model = TimeSformer(num_classes=3, num_frames=4, image_size=16, patch_size=8, dim=32, depth=2, heads=2,
                        scheme=time_then_joint)
    assert model.attention_steps == ("time", "joint")
    assert hasattr(model.blocks[0], "temporal_fc") and hasattr(model.blocks[0], "attn")
    x = torch.randn(2, 4, 3, 16, 16, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 3)
    out.square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # per-step backends by the scheme's own step names, and the close-match error for a typo
    model.set_backend({"joint": "recording"})
    assert [m.backend for m in model.attention_modules()] == ["regular", "recording"] * 2
    with pytest.raises(ValueError, match="Did you mean 'joint'"):
        model.set_backend({"jiont": "regular"})
    # the generative model's context encoder takes it too
    gen = GenerativeTimeSformer(dim=32, image_size=16, patch_size=4, num_frames=3, num_target_frames=1, depth=1,
                                heads=2, dim_head=16, scheme=time_then_joint)
    assert gen(torch.randn(1, 3, 3, 16, 16)).shape == (1, 1, 3, 16, 16)


def test_registered_scheme_trains_and_is_on_the_command_line(time_then_joint, tmp_path, capsys):
    from fast_timesformer.cli import main as cli_main
    from fast_timesformer.train.config import TrainConfig
    from fast_timesformer.train.trainer import Trainer

    cfg = TrainConfig(model="tiny", scheme=time_then_joint, num_frames=3, image_size=16, num_classes=2,
                      train_samples=8, eval_samples=4, batch=4, steps=1, out_dir=str(tmp_path / "run"),
                      progress=False, device="cpu", seed=0)
    trainer = Trainer(cfg)
    trainer.fit()
    assert trainer.step == 1 and trainer.module.scheme.name == time_then_joint
    # future-frame prediction: the GenerativeTimeSformer's context encoder runs it
    predict = Trainer(TrainConfig(model="tiny", scheme=time_then_joint, dataset="bouncing", num_frames=4,
                                  num_target_frames=2, image_size=16, train_samples=8, eval_samples=4, batch=4,
                                  steps=1, out_dir=str(tmp_path / "predict"), progress=False, device="cpu"))
    predict.fit()
    assert predict.module.scheme.name == time_then_joint and predict.module.attention_steps == (
        "time", "joint", "space", "cross")
    # the CLI in this process knows it: help text, the models table and a training run
    assert cli_main(["models", "tiny", "--scheme", time_then_joint]) == 0
    assert "T+ST" in capsys.readouterr().out
    assert cli_main(["train", "--model", "tiny", "--scheme", time_then_joint, "--frames", "3", "--image-size",
                     "16", "--num-classes", "2", "--train-samples", "8", "--eval-samples", "4", "--batch",
                     "4", "--steps", "1", "--device", "cpu", "--no-progress", "--out",
                     str(tmp_path / "cli")]) == 0


# ---- a backend registered from user code ----------------------------------------------------------
# A plugin module registering an *approximate* backend at import. Loaded with ``pytest -p`` it is
# registered before collection, so every test parametrised over the registry by kind (here
# tests/test_backends.py::test_approximate_backend_runs_and_approximates) runs it, with no edit to the tests.
PLUGIN = '''
import torch
from fast_timesformer import AttentionCore, Backend, register_backend
from fast_timesformer.kernels.naive import with_prefix


class TopKCore(AttentionCore):
    """Softmax over each query's 4 largest scores only: an approximation of softmax attention."""

    def attend(self, q, k, v, prefix_k, prefix_v, *, scale, dropout_p):
        k, v = with_prefix(k, v, prefix_k, prefix_v)
        scores = q @ k.transpose(-1, -2) * scale
        kth = scores.topk(min(4, scores.shape[-1]), dim=-1).values[..., -1:]
        return torch.softmax(scores.masked_fill(scores < kth, float("-inf")), dim=-1) @ v


register_backend(Backend(name="user_topk", factory=TopKCore, kind="approximate"))
'''


def test_user_approximate_backend_is_picked_up_by_the_parametrisation(tmp_path):
    (tmp_path / "user_topk_plugin.py").write_text(textwrap.dedent(PLUGIN))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "user_topk_plugin", "-p", "no:randomly", "-p", "no:cacheprovider",
         "-q", "-rA", os.path.join(ROOT, "tests", "test_backends.py"), "-k", "approximate"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "PASSED tests/test_backends.py::test_approximate_backend_runs_and_approximates[user_topk]" in proc.stdout
    assert "user_topk" not in list_backends()  # this process is untouched


def test_user_approximate_backend_passes_the_generic_check():
    """The same check in this process (what the parametrised test runs for it)."""
    from test_backends import check_approximate_backend

    namespace = {}
    exec(textwrap.dedent(PLUGIN), namespace)
    try:
        assert "user_topk" in list_backends()
        from fast_timesformer import get_backend

        be = get_backend("user_topk")
        assert be.kind == "approximate" and not be.exact and be.tolerances == {}
        check_approximate_backend("user_topk")
    finally:
        unregister_backend("user_topk")


# ---- README: "Adding a backend or a scheme", run as written --------------------------------------
def readme_snippets():
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text.split("## Adding a backend or a scheme", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_registration_snippets_run():
    snippets = readme_snippets()
    assert len(snippets) == 2
    namespace = {}
    try:
        for code in snippets:
            exec(compile(code, "README.md", "exec"), namespace)
        assert namespace["y"].shape == (2, 1 + 4 * 9, 64)
        assert namespace["logits"].shape == (2, 5)
    finally:
        if "mine" in list_backends():
            unregister_backend("mine")
        if "time_then_joint" in list_schemes():
            unregister_scheme("time_then_joint")
