"""Video data infrastructure (training/video.py): decoding, sampling, clip-consistent augmentation, the
`builtin:moving_digits` clips, corrupt-file counting, collation."""

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from hf_ssl.training.data import (SSLDataCollator, SSLViewDataset, UndecodableImage, build_view_generator,
                                  load_image_stream, materialize_builtin)
from hf_ssl.training.video import (ClipAugment, decode_clip, moving_digit_clip, multiscale_crop_box,
                                   sample_frame_indices, save_clip_gif, synthetic_camera_clip)
from tiny_configs import tiny_config


def _gif_bytes(num_frames=6, size=20, seed=0):
    rng = np.random.default_rng(seed)
    frames = [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(num_frames)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


def _ramp_frames(n=5, size=24):
    """Frames whose pixel values encode the frame index (so order and identity can be checked)."""
    return [Image.fromarray(np.full((size, size, 3), 10 * i, dtype=np.uint8)) for i in range(n)]


def test_decode_animated_gif_tiff_apng_and_frame_lists(tmp_path):
    frames = _ramp_frames(5)
    for fmt, ext in (("GIF", ".gif"), ("TIFF", ".tif"), ("PNG", ".png")):
        path = tmp_path / f"clip{ext}"
        frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:])
        decoded = decode_clip(str(path))
        assert len(decoded) == 5, fmt
        assert [int(np.asarray(f)[0, 0, 0]) for f in decoded] == [0, 10, 20, 30, 40], fmt
        assert decoded[0].mode == "RGB"
        assert len(decode_clip({"bytes": path.read_bytes(), "path": None})) == 5
    assert len(decode_clip(frames)) == 5  # a list of frames (a List(Image()) column)
    assert len(decode_clip([{"bytes": _png(f)} for f in frames])) == 5
    arr = np.stack([np.asarray(f) for f in frames])
    assert len(decode_clip(arr)) == 5  # [T, H, W, C] array
    assert decode_clip(arr, mode="L")[0].mode == "L"


def _png(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_decode_real_skimage_clip():
    import skimage

    path = os.path.join(os.path.dirname(skimage.__file__), "data", "no_time_for_that_tiny.gif")
    frames = decode_clip(path)
    assert len(frames) == 24 and frames[0].size == (14, 25) and frames[0].mode == "RGB"
    # a real clip: consecutive frames differ
    assert np.abs(np.asarray(frames[0], dtype=float) - np.asarray(frames[12], dtype=float)).mean() > 1


@pytest.mark.parametrize("bad", [b"", b"GIF89a garbage", "truncated"])
def test_corrupt_clips_raise_undecodable(bad):
    data = _gif_bytes()[:40] if bad == "truncated" else bad
    with pytest.raises(UndecodableImage):
        decode_clip({"bytes": data, "path": None})
    with pytest.raises(UndecodableImage):
        decode_clip([])


def test_video_container_without_pyav_is_a_clear_undecodable(tmp_path):
    try:
        import av  # noqa: F401
        pytest.skip("PyAV installed")
    except ImportError:
        pass
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    with pytest.raises(UndecodableImage, match="PyAV"):
        decode_clip(str(path))


def test_frame_sampling_offset_stride_and_loop_padding():
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(50):
        idx = sample_frame_indices(40, 8, 4, rng)
        assert np.all(np.diff(idx) == 4) and idx[-1] < 40
        starts.add(int(idx[0]))
    assert min(starts) >= 0 and max(starts) <= 40 - 29 and len(starts) > 3  # random temporal offset
    assert sample_frame_indices(40, 8, 4, mode="center").tolist() == [5 + 4 * i for i in range(8)]
    assert sample_frame_indices(5, 8, 1, rng).tolist() == [0, 1, 2, 3, 4, 0, 1, 2]  # loop-padded
    assert sample_frame_indices(1, 4, 2, rng).tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError):
        sample_frame_indices(0, 4)


def test_clip_augmentation_is_consistent_across_frames():
    """The same crop / flip / colour parameters for every frame: identical frames stay identical after augmentation,
    and a moving pattern is shifted, not re-cropped."""
    aug = ClipAugment(16, [0.5] * 3, [0.25] * 3, crop="resized", scale=(0.3, 0.9), horizontal_flip=0.5,
                      color_jitter=1.0, color_jitter_strength=(0.4, 0.4, 0.4, 0.1), grayscale=0.5, gaussian_blur=0.5)
    rng = np.random.default_rng(1)
    base = Image.fromarray(np.random.default_rng(2).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    for _ in range(10):
        clip, params = aug([base] * 6, rng, return_params=True)
        assert clip.shape == (6, 3, 16, 16)
        assert all(torch.equal(clip[0], clip[t]) for t in range(6))
    # two independent draws differ (the augmentation is random per clip)
    a, b = aug([base] * 2, np.random.default_rng(3)), aug([base] * 2, np.random.default_rng(4))
    assert not torch.allclose(a, b)
    # multi-scale crop boxes use the fixed scales and stay inside the frame
    for seed in range(20):
        left, top, w, h = multiscale_crop_box(64, 48, 32, (1, 0.875, 0.75, 0.66), rng=np.random.default_rng(seed))
        assert {w, h} <= {48, 42, 36, 31, 32} and left + w <= 64 and top + h <= 48


def test_synthetic_camera_clip_and_flag():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    frames = synthetic_camera_clip(img, 6, np.random.default_rng(0))
    assert len(frames) == 6 and all(f.size == img.size for f in frames)
    assert np.abs(np.asarray(frames[0], float) - np.asarray(frames[-1], float)).mean() > 1  # the camera moves
    static = synthetic_camera_clip(img, 4, np.random.default_rng(0), static=True)
    assert all(f is img for f in static)
    config = tiny_config("videomae")
    policy = build_view_generator(config)
    out = policy([img], np.random.default_rng(0))
    assert out["synthetic_clip"] is True and out["pixel_values_videos"].shape == (8, 3, 32, 32)
    out = policy(_ramp_frames(20, 32), np.random.default_rng(0))
    assert out["synthetic_clip"] is False


def test_moving_digit_clip_moves_a_real_digit_and_gif_roundtrip(tmp_path):
    from sklearn.datasets import load_digits

    digit = (load_digits().images[3] / 16 * 255).astype(np.uint8)
    clip = moving_digit_clip(digit, np.random.default_rng(0))
    assert clip.shape == (16, 32, 32) and clip.dtype == np.uint8
    sums = clip.reshape(16, -1).sum(1)
    assert np.allclose(sums, sums[0])  # the whole digit stays on the canvas (bouncing, never clipped)
    centres = [np.argwhere(f > 0).mean(0) for f in clip]
    assert all(np.abs(centres[i + 1] - centres[i]).max() > 0 for i in range(15))  # it moves every frame
    save_clip_gif(clip, str(tmp_path / "c.gif"))
    back = np.stack([np.asarray(f)[..., 0] for f in decode_clip(str(tmp_path / "c.gif"))])
    assert np.array_equal(back, clip)  # lossless


def test_builtin_moving_digits_split_labels_and_stream():
    root = materialize_builtin("moving_digits")
    for split, per_class in (("test", 30), ("train", None)):
        labels = sorted(os.listdir(os.path.join(root, split)))
        assert labels == [str(i) for i in range(10)]
        counts = [len(os.listdir(os.path.join(root, split, c))) for c in labels]
        if per_class:
            assert counts == [per_class] * 10
    assert sum(len(os.listdir(os.path.join(root, "train", c))) for c in labels) == 1497
    ds = load_image_stream("builtin:moving_digits", split="test", shuffle_buffer=0)
    example = next(iter(ds))
    assert example["label"] == 0 and len(decode_clip(example["image"])) == 16


def test_corrupt_clip_files_are_counted_and_collated(tmp_path):
    root = materialize_builtin("moving_digits")
    data = tmp_path / "data"
    for label in ("0", "1"):
        (data / label).mkdir(parents=True)
        for i, f in enumerate(sorted(os.listdir(os.path.join(root, "test", label)))[:3]):
            (data / label / f"c{i}.gif").write_bytes(open(os.path.join(root, "test", label, f), "rb").read())
    (data / "0" / "a_zero.gif").write_bytes(b"")
    (data / "1" / "a_trunc.gif").write_bytes((data / "0" / "c0.gif").read_bytes()[:60])
    config = tiny_config("videomae")
    ds = SSLViewDataset(load_image_stream(str(data), split="train", shuffle_buffer=0), build_view_generator(config))
    examples = list(ds)
    batch = SSLDataCollator()(examples)
    assert int(batch["num_skipped"]) == 2 and ds.skipped_total == 2
    assert batch["pixel_values_videos"].shape == (6, 8, 3, 32, 32)
    assert batch["bool_masked_pos"].shape == (6, 64) and batch["synthetic_clip"].tolist() == [0] * 6


def test_frame_list_column_dataset(tmp_path):
    """A `datasets` column holding a list of frames is found, left undecoded, and clips come out of it."""
    from datasets import ClassLabel, Dataset, Features, List
    from datasets import Image as ImageFeature

    frames = _ramp_frames(6, 32)
    rows = {"frames": [[_png(f) for f in frames], [_png(f) for f in frames[::-1]], [b"", b""]], "label": [0, 1, 1]}
    features = Features({"frames": List(ImageFeature()), "label": ClassLabel(names=["a", "b"])})
    Dataset.from_dict({"frames": [[{"bytes": b, "path": None} for b in r] for r in rows["frames"]],
                       "label": rows["label"]}, features=features).to_parquet(str(tmp_path / "train-0.parquet"))
    stream = load_image_stream(str(tmp_path), split="train", shuffle_buffer=0)
    config = tiny_config("videomae")
    ds = SSLViewDataset(stream, build_view_generator(config, "video_eval"), with_labels=True)
    assert ds.image_key == "frames"
    out = list(ds)
    good = [e for e in out if not e.get("_empty")]
    assert len(good) == 2 and sum(e["num_skipped"] for e in out) == 1  # the clip of empty frames is skipped
    first, second = good[0]["pixel_values_videos"], good[1]["pixel_values_videos"]
    assert first.shape == (8, 3, 32, 32) and [e["labels"] for e in good] == [0, 1]

    def values(clip):
        return (clip[:, 0, 16, 16] * config.image_std[0] + config.image_mean[0]) * 255

    # 8 frames at stride 2 from a 6-frame clip: indices [0, 2, 4, 0, 2, 4, 0, 2] (loop-padded), order preserved
    assert values(first).tolist() == pytest.approx([0, 20, 40, 0, 20, 40, 0, 20], abs=1.5)
    assert values(second).tolist() == pytest.approx([50, 30, 10, 50, 30, 10, 50, 30], abs=1.5)


def test_video_eval_policy_is_deterministic():
    config = tiny_config("videomae")
    policy = build_view_generator(config, "video_eval")
    frames = _ramp_frames(20, 40)
    a, b = policy(frames), policy(frames, np.random.default_rng(5))
    assert torch.equal(a["pixel_values_videos"], b["pixel_values_videos"])
    # centred window of 8 frames at stride 2 over 20 frames: start (20 - 15) // 2 = 2
    values = a["pixel_values_videos"][:, 0, 16, 16] * config.image_std[0] + config.image_mean[0]
    assert (values * 255).round().tolist() == pytest.approx([10 * (2 + 2 * i) for i in range(8)], abs=1.5)
