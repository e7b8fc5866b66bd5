"""Multi-view testing (issue 25): which frames and crops make the views, and the identity that the
multi-view score is the mean of the single-view softmax scores, each computed on its own."""
import numpy as np
import pytest
import torch

from fast_timesformer import video
from fast_timesformer.models import TimeSformer
from fast_timesformer.train import views as V

av = pytest.importorskip("av", reason="PyAV (the 'video' extra) is not installed")


def test_parse_views():
    assert V.parse_views("1x3") == (1, 3) and V.parse_views(" 2X1 ") == (2, 1) and V.parse_views((4, 3)) == (4, 3)
    for bad in ("3", "0x3", "1x", "ax3", "1x3x2"):
        with pytest.raises(ValueError, match="TxS"):
            V.parse_views(bad)


def test_clip_frame_indices_spread_evenly():
    assert V.clip_frame_indices(30, 4, 1) == [video.sample_frame_indices(30, 4, "uniform")]
    # 16 frames in 4 segments of 4: clip 0 at a quarter of each segment, clip 1 at three quarters
    assert V.clip_frame_indices(16, 4, 2) == [[1, 5, 9, 13], [3, 7, 11, 15]]
    assert V.clip_frame_indices(3, 4, 2) == [[0, 0, 1, 2], [0, 1, 2, 2]]  # short videos repeat frames


def test_spatial_crops_along_the_longer_side():
    wide = torch.arange(10).view(1, 1, 1, 10).expand(2, 3, 4, 10)  # value = column
    crops = V.spatial_crops(wide, 4, 3)
    assert crops.shape == (3, 2, 3, 4, 4)
    assert [int(c[0, 0, 0, 0]) for c in crops] == [0, 3, 6]            # left, centre, right
    assert torch.equal(crops[1], video.crop(wide, 4, mode="center"))       # one crop = the single view's centre
    tall = wide.transpose(-1, -2)                                      # 10 x 4: crops go top to bottom
    assert [int(c[0, 0, 0, 0]) for c in V.spatial_crops(tall, 4, 3)] == [0, 3, 6]
    assert V.crop_offsets(9, 4, 2) == [0, 5]


def _write_video(path, frames=20, h=24, w=40):
    """Frame t: a horizontal ramp plus 6 t, so every clip and every crop sees different pixels."""
    x = np.arange(w)[None, :, None]
    with av.open(str(path), mode="w") as c:
        s = c.add_stream("mpeg4", rate=8)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"qscale": "1"}
        for t in range(frames):
            img = np.broadcast_to(4 * x + 6 * t, (h, w, 3)).clip(0, 255).astype(np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def test_multi_view_scores_are_the_mean_of_single_views(tmp_path):
    path = tmp_path / "clip.mp4"
    _write_video(path)
    t = video.ClipTransform(num_frames=4, image_size=16, resize=18)  # resized 18 x 30: crops at x = 0, 7, 14
    torch.manual_seed(0)
    model = TimeSformer(num_classes=5, num_frames=4, image_size=16, patch_size=8, dim=32, depth=1, heads=2,
                        drop_path=0.0).double().eval()
    for p in model.parameters():  # larger weights than the init's, so views give clearly different scores
        torch.nn.init.normal_(p, std=0.3)
    with torch.no_grad():
        views = V.video_views(str(path), t, "2x3")
        assert views.shape == (6, 4, 3, 16, 16)
        multi = V.average_view_scores(model, views[None].double())[0]

        # one by one, from the decoded frames: clip j's frames at (j + 1/2) / 2 of each of 4 segments of 20
        with av.open(str(path)) as c:
            frames = [torch.from_numpy(f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
        assert len(frames) == 20
        singles = []
        for j in range(2):
            idx = [int(5 * (i + (j + 0.5) / 2)) for i in range(4)]
            clip = torch.stack([frames[i] for i in idx]).permute(0, 3, 1, 2)
            clip = video.resize_short_side(clip, 18)
            assert clip.shape[-2:] == (18, 30)
            for left in (0, 7, 14):
                view = video.normalize(clip[..., 1:17, left:left + 16], t.mean, t.std)
                singles.append(model(view[None].double()).softmax(-1)[0])
        singles = torch.stack(singles)
    # the views really differ, so the identity is not met by a constant
    assert (singles - singles.mean(0)).abs().max() > 1e-3
    # float64: batched and one-by-one forwards differ only in summation order (~1e-16 relative)
    torch.testing.assert_close(multi, singles.mean(0), rtol=1e-12, atol=1e-12)


def test_one_view_is_the_single_view_clip(tmp_path):
    path = tmp_path / "clip.mp4"
    _write_video(path, frames=13)
    t = video.ClipTransform(num_frames=4, image_size=16)
    single = video.preprocess_clip(video.read_video(str(path), 4, "uniform"), t)
    assert torch.equal(V.video_views(str(path), t, "1x1")[0], single)
