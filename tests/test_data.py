"""Datasets of fast_timesformer.train.data: synthetic tasks and the PyAV video folder."""
import math

import pytest
import torch

from fast_timesformer import video
from fast_timesformer.train import data as D


# ---- moving shapes --------------------------------------------------------------------------------
def test_moving_shapes_shape_and_determinism():
    ds = D.MovingShapes(16, num_frames=6, image_size=16, channels=3, seed=3)
    x, y = ds[5]
    assert x.shape == (6, 3, 16, 16) and x.dtype == torch.float32
    assert 0 <= y < 4
    x2, y2 = D.MovingShapes(16, num_frames=6, image_size=16, channels=3, seed=3)[5]
    assert torch.equal(x, x2) and y == y2
    x3, _ = D.MovingShapes(16, num_frames=6, image_size=16, channels=3, seed=4)[5]
    assert not torch.equal(x, x3)
    labels = {ds[i][1] for i in range(16)}
    assert len(labels) >= 3  # the labels vary


def test_moving_shapes_orders_are_distinct_permutations():
    for f in (3, 4, 7, 8):
        orders = D._orders(f)
        assert all(sorted(o) == list(range(f)) for o in orders.values())
        # as motion patterns (sign of the step between shown frames) the four classes all differ
        patterns = {tuple((b > a) - (b < a) for a, b in zip(o, o[1:])) for o in orders.values()}
        assert len(patterns) == 4, f


def test_every_label_shows_the_same_frames_only_reordered():
    ds = D.MovingShapes(32, num_frames=8, image_size=16, noise=0.0, seed=1)
    for i in range(8):
        clip, label = ds[i]
        base = ds.base_clip(i)
        assert torch.equal(clip, base[ds.orders[label]])
        # the multiset of frames is the same for every label: sorted frame keys agree
        keys = sorted(tuple(f.flatten().tolist()) for f in clip)
        for order in ds.orders:
            assert sorted(tuple(f.flatten().tolist()) for f in base[order]) == keys


def _circular_position(frames: torch.Tensor) -> torch.Tensor:
    """(..., c, H, W) -> angle of the mass's circular mean along x and y: (..., 2) in radians."""
    m = frames.sum(-3)  # (..., H, W)
    h = m.shape[-1]
    ang = 2 * math.pi * torch.arange(h) / h
    out = []
    for profile in (m.sum(-2), m.sum(-1)):  # along x, along y
        s = (profile * ang.sin()).sum(-1)
        c = (profile * ang.cos()).sum(-1)
        out.append(torch.atan2(s, c))
    return torch.stack(out, -1)


def test_single_frames_carry_no_label_information_but_motion_does():
    """For each frame position t, where the shape is has the same (uniform) distribution for every label,
    while the displacement between consecutive frames differs strongly between labels."""
    ds = D.MovingShapes(1024, num_frames=8, image_size=16, channels=1, noise=0.0, seed=7, speed=2,
                        shape_size=(4, 6))
    clips, labels = zip(*(ds[i] for i in range(len(ds))))
    clips, labels = torch.stack(clips), torch.tensor(labels)
    pos = _circular_position(clips)                                  # (N, f, 2)
    for c in range(4):
        sel = pos[labels == c]                                       # (n_c, f, 2)
        n = sel.shape[0]
        assert n > 150
        # uniform angle: E[cos] = E[sin] = 0 per frame and axis; 4.5 standard errors allowed
        for stat in (sel.cos().mean(0), sel.sin().mean(0)):
            assert stat.abs().max() < 4.5 * math.sqrt(0.5 / n), (c, stat)
    # the temporal signal: mean signed step of the moving axis per label
    step = torch.remainder(pos[:, 1:] - pos[:, :-1] + math.pi, 2 * math.pi) - math.pi  # (N, f-1, 2)
    signed = step.sum(-1).mean(-1)                                   # (N,)
    first_half = step.sum(-1)[:, :3].mean(-1)
    fwd, bwd = signed[labels == 0].mean(), signed[labels == 1].mean()
    assert fwd > 0.2 and bwd < -0.2                                  # forward moves +, backward moves -
    fb, bf = first_half[labels == 2].mean(), first_half[labels == 3].mean()
    assert fb > 0.2 and bf < -0.2                                    # forth-and-back vs back-and-forth


def test_space_only_model_cannot_tell_the_labels_apart():
    """The official space_only model is invariant to the order of frames, and every label shows the same
    frames: its output for a clip is the same whichever label ordered them."""
    from fast_timesformer.models import TimeSformer

    torch.manual_seed(0)
    model = TimeSformer(num_classes=4, num_frames=4, image_size=16, patch_size=8, dim=32, depth=1, heads=2,
                        drop_path=0.0, scheme="space_only").eval()
    ds = D.MovingShapes(4, num_frames=4, image_size=16, noise=0.0)
    base = ds.base_clip(0)
    outs = [model(base[order][None]) for order in ds.orders]
    for o in outs[1:]:
        # float32: the same frames in another order, averaged in another order: ~1e-7 on O(1) logits
        torch.testing.assert_close(o, outs[0], rtol=1e-5, atol=1e-5)
    divided = TimeSformer(num_classes=4, num_frames=4, image_size=16, patch_size=8, dim=32, depth=1, heads=2,
                          drop_path=0.0, scheme="divided_space_time").eval()
    torch.nn.init.normal_(divided.time_embed, std=0.5)  # time_embed starts at zero: give it a value
    for block in divided.blocks:
        torch.nn.init.normal_(block.temporal_fc.weight, std=0.2)
    a, b = divided(base[ds.orders[0]][None]), divided(base[ds.orders[1]][None])
    assert not torch.allclose(a, b, atol=1e-4)  # a temporal model does see the order


def test_moving_shapes_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        D.MovingShapes(4, num_classes=3)
    with pytest.raises(ValueError, match="3 frames"):
        D.MovingShapes(4, num_frames=2)
    with pytest.raises(IndexError):
        D.MovingShapes(4)[4]


# ---- bouncing shapes ------------------------------------------------------------------------------
def test_bouncing_shapes_predicts_the_continuation():
    ds = D.BouncingShapes(8, num_frames=5, num_target_frames=3, image_size=16, channels=3, seed=2)
    x, y = ds[0]
    assert x.shape == (5, 3, 16, 16) and y.shape == (3, 3, 16, 16)
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    x2, y2 = D.BouncingShapes(8, num_frames=5, num_target_frames=3, image_size=16, channels=3, seed=2)[0]
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x[0], x[1])  # things move
    assert ds.copy_last_mse() > 0
    # the same sample with a longer input is the same motion: the target continues the input
    longer = D.BouncingShapes(8, num_frames=7, num_target_frames=1, image_size=16, channels=3, seed=2)
    lx, _ = longer[0]
    torch.testing.assert_close(lx[5:7], y[:2])


def test_bouncing_shapes_stay_inside():
    ds = D.BouncingShapes(4, num_frames=30, num_target_frames=1, image_size=16, num_shapes=1, max_speed=3.0)
    x, _ = ds[1]
    mass = x.sum((1, 2, 3))
    assert mass.min() > 0.6 * mass.max()  # the disk never leaves the frame (reflection at the walls)


# ---- frame sampling and transforms ----------------------------------------------------------------
def test_sample_frame_indices():
    assert video.sample_frame_indices(16, 4, "uniform") == [2, 6, 10, 14]
    assert video.sample_frame_indices(3, 6, "uniform") == [0, 0, 1, 1, 2, 2]  # short videos repeat frames
    g = torch.Generator().manual_seed(0)
    idx = video.sample_frame_indices(40, 8, "random", generator=g)
    assert idx == sorted(idx) and all(5 * i <= j < 5 * (i + 1) for i, j in enumerate(idx))
    with pytest.raises(ValueError, match="sampling"):
        video.sample_frame_indices(10, 2, "middle")
    with pytest.raises(ValueError, match="no frames"):
        video.sample_frame_indices(0, 2)


def test_resize_crop_normalize():
    clip = torch.arange(2 * 3 * 20 * 30, dtype=torch.float32).view(2, 3, 20, 30) % 255
    r = video.resize_short_side(clip, 10)
    assert r.shape == (2, 3, 10, 15)
    c = video.crop(r, 10)
    assert c.shape == (2, 3, 10, 10)
    assert torch.equal(video.crop(r, 10, mode="center"), r[..., :, 2:12])
    g = torch.Generator().manual_seed(1)
    rc = video.crop(r, 8, mode="random", generator=g)
    assert rc.shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="cannot crop"):
        video.crop(r, 11)
    n = video.normalize(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert torch.allclose(n, torch.full_like(n, 2.0))
    with pytest.raises(ValueError, match="channels"):
        video.normalize(clip, (0.5,), (0.5,))


# ---- PyAV video folder ----------------------------------------------------------------------------
av = pytest.importorskip("av", reason="PyAV (the 'video' extra) is not installed")

# (extension, codec): mpeg4 in .mp4 and .avi, VP8 in .webm - the encoders this PyAV build carries.
CONTAINERS = [(".mp4", "mpeg4"), (".avi", "mpeg4"), (".webm", "libvpx")]


def write_video(path, num_frames=12, size=(24, 32), value=lambda t: 10 + 20 * t, codec="mpeg4"):
    """A clip whose frame t is a flat grey of brightness value(t) (lossy codecs keep flat frames close)."""
    h, w = size
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=8)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec == "mpeg4":
            stream.options = {"qscale": "1"}
        for t in range(num_frames):
            img = torch.full((h, w, 3), value(t), dtype=torch.uint8).numpy()
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _codec_available(codec):
    try:
        av.codec.Codec(codec, "w")
        return True
    except Exception:
        return False


@pytest.mark.parametrize("ext,codec", CONTAINERS)
def test_read_video_each_container(tmp_path, ext, codec):
    if not _codec_available(codec):
        pytest.skip(f"this PyAV build has no {codec} encoder to write a {ext} test file")
    path = tmp_path / f"clip{ext}"
    write_video(path, num_frames=12, codec=codec)
    clip = video.read_video(str(path), 4, "uniform")
    assert clip.shape == (4, 3, 24, 32) and clip.dtype == torch.uint8
    expected = [10 + 20 * t for t in video.sample_frame_indices(12, 4, "uniform")]  # frames 1, 4, 7, 10
    got = clip.float().mean((1, 2, 3)).tolist()
    assert all(abs(g - e) < 6 for g, e in zip(got, expected)), (got, expected)


def test_read_video_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        video.read_video(str(tmp_path / "missing.mp4"), 4)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not a video")
    with pytest.raises(ValueError, match="bad.mp4"):
        video.read_video(str(bad), 4)


@pytest.fixture
def video_folder(tmp_path):
    root = tmp_path / "videos"
    for c, (cls, offset) in enumerate((("jump", 0), ("run", 100))):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            write_video(root / cls / f"v{i}.avi", num_frames=10, value=lambda t, o=offset: o + 10 + 8 * t)
    (root / "run" / "notes.txt").write_text("not a video")
    return root


def test_video_folder(video_folder):
    t = video.ClipTransform(num_frames=4, image_size=16, resize=20, sampling="uniform", crop="center",
                        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    ds = D.VideoFolder(str(video_folder), t)
    assert ds.classes == ["jump", "run"] and len(ds) == 4
    assert [label for _, label in ds.samples] == [0, 0, 1, 1]
    x, y = ds[2]
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and y == 1
    means = x.mean((1, 2, 3)) * 255
    expected = torch.tensor([100 + 10 + 8 * i for i in video.sample_frame_indices(10, 4)], dtype=torch.float32)
    assert (means - expected).abs().max() < 6

    rnd = D.VideoFolder(str(video_folder), video.ClipTransform(num_frames=4, image_size=16, sampling="random",
                                                           crop="random"), seed=5)
    a, b = rnd[0][0], rnd[0][0]
    assert torch.equal(a, b)  # a pure function of (seed, epoch, index)
    draws = set()
    for epoch in range(6):
        rnd.set_epoch(epoch)
        draws.add(tuple(rnd[0][0].mean((1, 2, 3)).round(decimals=2).tolist()))
    assert len(draws) > 1  # random sampling changes with the epoch


def test_video_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        D.VideoFolder(str(tmp_path / "nope"))
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="no video files"):
        D.VideoFolder(str(tmp_path / "empty"))
    (tmp_path / "flat").mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        D.VideoFolder(str(tmp_path / "flat"))


def test_build_dataset(video_folder):
    ds = D.build_dataset("moving-shapes", "train", num_samples=8, num_frames=4, image_size=16)
    ev = D.build_dataset("moving-shapes", "eval", num_samples=8, num_frames=4, image_size=16)
    assert not torch.equal(ds[0][0], ev[0][0])  # evaluation uses other samples
    assert isinstance(D.build_dataset("bouncing", "train", num_samples=4, num_frames=4, image_size=16),
                      D.BouncingShapes)
    vf = D.build_dataset(str(video_folder), "eval", num_samples=0, num_frames=4, image_size=16)
    assert vf.transform.sampling == "uniform" and vf.transform.crop == "center"
    with pytest.raises(ValueError, match="unknown dataset"):
        D.build_dataset("kinetics-9000", "train", num_samples=1, num_frames=4, image_size=16)
