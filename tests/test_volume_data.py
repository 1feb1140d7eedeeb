"""3-D volume infrastructure: multi-page TIFF decoding (8/16-bit), the `wants_frames` hook of SSLViewDataset, numpy
volume augmentation, the volume view policies and the built-in synthetic shape volumes."""

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from hf_ssl.training.data import (SSLDataCollator, SSLViewDataset, UndecodableImage, decode_frames,
                                  load_image_stream, materialize_builtin)
from hf_ssl.training.volumes import (BUILTIN_TEST_PER_CLASS, BUILTIN_TRAIN_PER_CLASS, SHAPE_CLASSES,
                                     VolumeAugment, VolumeEvalPolicy, frames_to_volume, generate_shape_volume,
                                     normalize_volume_intensity, random_crop_box_3d, resize_volume,
                                     save_volume_tiff)


def _tiff_bytes(volume, bits=8):
    path = io.BytesIO()
    vol = np.clip(volume, 0, 1)
    if bits == 16:
        pages = [Image.fromarray(np.round(s * 65535).astype(np.uint16)) for s in vol]
    else:
        pages = [Image.fromarray(np.round(s * 255).astype(np.uint8)) for s in vol]
    pages[0].save(path, format="TIFF", save_all=True, append_images=pages[1:])
    return path.getvalue()


def test_multipage_tiff_8_and_16_bit_round_trip():
    rng = np.random.default_rng(0)
    vol = rng.uniform(size=(5, 6, 7))
    frames8 = decode_frames({"bytes": _tiff_bytes(vol, 8), "path": None}, None)
    assert len(frames8) == 5 and frames8[0].size == (7, 6)
    v8 = frames_to_volume(frames8, 1)
    assert v8.shape == (1, 5, 6, 7) and np.abs(v8[0] - vol).max() <= 0.5 / 255 + 1e-6
    frames16 = decode_frames(_tiff_bytes(vol, 16), None)
    assert frames16[0].mode.startswith("I")  # 16-bit pages keep their range (no 8-bit clipping)
    v16 = frames_to_volume(frames16, 1)
    assert np.abs(v16[0] - vol).max() <= 0.5 / 65535 + 1e-6
    # channel adaptation: grey -> 3 channels repeats, RGBA -> 3 drops alpha, 1 takes the luma
    assert np.array_equal(frames_to_volume(frames8, 3), np.repeat(v8, 3, axis=0))
    rgba = [Image.fromarray(np.full((4, 4, 4), [255, 0, 0, 128], dtype=np.uint8), "RGBA") for _ in range(3)]
    assert frames_to_volume(rgba, 4)[3].max() == pytest.approx(128 / 255)
    assert frames_to_volume(rgba, 3)[0].min() == 1.0
    assert frames_to_volume(rgba, 1)[0].max() == pytest.approx(0.299)
    with pytest.raises(ValueError, match="4-channel"):
        frames_to_volume(frames8, 4)


def test_slice_list_column_and_corrupt_files_raise_undecodable():
    slices = [Image.fromarray(np.full((4, 4), i * 20, dtype=np.uint8)) for i in range(3)]
    frames = decode_frames(slices, None)
    assert [int(np.asarray(f)[0, 0]) for f in frames] == [0, 20, 40]
    good = _tiff_bytes(np.zeros((4, 8, 8)))
    for bad in (b"", good[:50], b"\x89PNG not really", []):
        with pytest.raises(UndecodableImage):
            decode_frames(bad if not isinstance(bad, bytes) else {"bytes": bad, "path": None}, None)


def test_view_dataset_hands_all_pages_to_frame_policies_and_counts_bad_files(tmp_path):
    class Cfg:
        augmentation = {}
        num_channels = 1
        image_size = 8
        image_mean, image_std = [0.5], [0.25]

    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(2):
            (tmp_path / label / f"v{i}.tif").write_bytes(_tiff_bytes(np.full((6, 8, 8), 0.25 + 0.5 * i)))
    (tmp_path / "a" / "broken.tif").write_bytes(b"")
    ds = SSLViewDataset(load_image_stream(str(tmp_path), shuffle_buffer=0), VolumeEvalPolicy(Cfg()),
                        image_mode="RGB")  # the policy's frame_mode=None overrides the image mode
    examples = list(ds)
    batch = SSLDataCollator()(examples)
    vols = batch["pixel_values_volumes"]
    assert vols.shape == (4, 1, 8, 8, 8)  # 6 slices resized to depth 8
    assert int(batch["num_skipped"]) == 1
    raw = vols * 0.25 + 0.5
    assert sorted(round(float(v), 3) for v in raw.mean(dim=(1, 2, 3, 4))) == [0.251, 0.251, 0.749, 0.749]


def test_resize_volume_is_exact_on_constant_linear_and_block_inputs():
    const = np.full((2, 4, 6, 8), 0.3, dtype=np.float32)
    assert np.allclose(resize_volume(const, (7, 5, 9)), 0.3)
    assert resize_volume(const, (4, 6, 8)) is const
    x = np.arange(8, dtype=np.float32)
    ramp = np.broadcast_to(x, (1, 2, 2, 8)).copy()
    up = resize_volume(ramp, (2, 2, 16))[0, 0, 0]
    # half-pixel centres: interior samples are exactly linear, borders are clamped
    assert np.allclose(np.diff(up[1:-1]), 0.5)
    block = np.arange(16, dtype=np.float32).reshape(1, 1, 1, 16)
    assert np.allclose(resize_volume(block, (1, 1, 4))[0, 0, 0], [1.5, 5.5, 9.5, 13.5])


def test_volume_augment_flips_crops_and_is_seeded():
    rng = np.random.default_rng(0)
    vol = rng.uniform(size=(1, 6, 7, 8)).astype(np.float32)
    aug = VolumeAugment((6, 7, 8), [0.0], [1.0], crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=1.0,
                        intensity=0.0)
    out, params = aug(vol, np.random.default_rng(1), return_params=True)
    assert params["flips"] == (True, True, True) and params["size"] == (6, 7, 8)
    assert torch.allclose(out, torch.from_numpy(vol[:, ::-1, ::-1, ::-1].copy()))
    aug = VolumeAugment((4, 4, 4), [0.5], [0.5], crop_scale=(0.2, 0.6))
    a = aug(vol, np.random.default_rng(3))
    b = aug(vol, np.random.default_rng(3))
    assert a.shape == (1, 4, 4, 4) and torch.equal(a, b)
    for seed in range(20):
        start, size = random_crop_box_3d((30, 30, 30), (0.2, 0.6), rng=np.random.default_rng(seed))
        assert all(0 <= s and s + n <= 30 for s, n in zip(start, size))
        assert 0.1 < np.prod(size) / 30 ** 3 < 0.75
    # intensity jitter only on the chosen channels (radiance grids keep their density)
    two = np.stack([vol[0], vol[0]])
    aug = VolumeAugment((6, 7, 8), [0, 0], [1, 1], crop_scale=(1, 1), crop_ratio=(1, 1), flip=0.0, intensity=1.0,
                        intensity_channels=[0])
    out = aug(two, np.random.default_rng(0))
    assert torch.allclose(out[1], torch.from_numpy(vol[0])) and not torch.allclose(out[0], out[1])
    with pytest.raises(ValueError):
        VolumeAugment((4, 4, 4), [0], [1], crop_scale=(0.0, 1.0))


def test_synthetic_shapes_are_seeded_distinct_and_split(tmp_path):
    a = generate_shape_volume("torus", np.random.default_rng(5))
    b = generate_shape_volume("torus", np.random.default_rng(5))
    c = generate_shape_volume("box", np.random.default_rng(5))
    assert a.shape == (32, 32, 32) and np.array_equal(a, b) and not np.allclose(a, c)
    rad = generate_shape_volume("sphere", np.random.default_rng(0), radiance=True)
    assert rad.shape == (32, 32, 32, 4)
    empty = rad[..., 3] < 0.01
    assert empty.any() and (~empty).any() and np.all(rad[empty][:, :3] == 0)  # no colour in empty space
    path = tmp_path / "v.tif"
    save_volume_tiff(rad, str(path))
    back = frames_to_volume(decode_frames(str(path), None), 4)
    assert np.abs(back.transpose(1, 2, 3, 0) - rad).max() <= 0.5 / 255 + 1e-6
    root = materialize_builtin("shapes3d")
    for split, n in (("train", BUILTIN_TRAIN_PER_CLASS), ("test", BUILTIN_TEST_PER_CLASS)):
        labels = sorted(os.listdir(os.path.join(root, split)))
        assert labels == [f"{i:02d}_{s}" for i, s in enumerate(SHAPE_CLASSES)]
        assert all(len(os.listdir(os.path.join(root, split, lab))) == n for lab in labels)


def test_percentile_intensity_normalisation_removes_each_volume_s_levels():
    rng = np.random.default_rng(0)
    vol = rng.uniform(size=(2, 6, 8, 8)).astype(np.float32)
    vol[1] = vol[1] * 0.3 + 0.1  # the second channel lives on its own range
    out = normalize_volume_intensity(vol, "percentile", (1, 99))
    for c in range(2):  # per channel: its 1st / 99th percentiles go to 0 / 1, values outside are clipped
        lo, hi = np.percentile(vol[c], 1), np.percentile(vol[c], 99)
        assert np.allclose(out[c], np.clip((vol[c] - lo) / (hi - lo), 0, 1), atol=1e-6)
        assert out[c].min() == 0.0 and out[c].max() == 1.0
    # invariant to a per-volume gain and offset (scanner / stack intensity levels)
    assert np.allclose(normalize_volume_intensity(2.5 * vol + 0.3, "percentile", (1, 99)), out, atol=1e-5)
    assert normalize_volume_intensity(vol, None) is vol
    with pytest.raises(ValueError, match="intensity_normalization"):
        normalize_volume_intensity(vol, "zscore")
    with pytest.raises(ValueError, match="intensity_percentiles"):
        normalize_volume_intensity(vol, "percentile", (90, 10))


def test_intensity_normalisation_is_the_same_in_training_views_evaluation_and_the_image_processor(tmp_path):
    from hf_ssl.modeling.image_volume_clustering import ImageVolumeClusteringConfig
    from hf_ssl.modeling.image_volume_clustering.image_processing_image_volume_clustering import (
        ImageVolumeClusteringImageProcessor)
    from hf_ssl.modeling.image_volume_clustering.views_image_volume_clustering import ImageVolumeViewsPolicy

    config = ImageVolumeClusteringConfig(backbone_config="resnet-tiny", num_channels=1, image_size=8, volume_depth=6,
                                         augmentation={"intensity_normalization": "percentile"})
    base = generate_shape_volume("torus", np.random.default_rng(1), size=8)
    dark, bright = 0.05 + 0.3 * base, 0.4 + 0.6 * base  # one shape at two intensity levels
    frames = {}
    for name, vol in (("dark", dark), ("bright", bright)):
        save_volume_tiff(vol, str(tmp_path / f"{name}.tif"))
        frames[name] = decode_frames(open(tmp_path / f"{name}.tif", "rb").read(), None)
    ev = VolumeEvalPolicy(config)
    a, b = ev(frames["dark"])["pixel_values_volumes"], ev(frames["bright"])["pixel_values_volumes"]
    assert torch.allclose(a, b, atol=0.1)  # equal up to 8-bit quantisation (a dark level step is ~0.05 here)
    plain = VolumeEvalPolicy(ImageVolumeClusteringConfig(backbone_config="resnet-tiny", num_channels=1, image_size=8,
                                                         volume_depth=6))
    plain_gap = (plain(frames["dark"])["pixel_values_volumes"] - plain(frames["bright"])["pixel_values_volumes"]).abs()
    assert float(plain_gap.mean()) > 10 * float((a - b).abs().mean())  # without it the levels stay apart
    # training views start from the same normalised volume (same seed -> same views for both levels)
    train = ImageVolumeViewsPolicy(config)
    va = train(frames["dark"], np.random.default_rng(3))["pixel_values_volumes"][0]
    vb = train(frames["bright"], np.random.default_rng(3))["pixel_values_volumes"][0]
    assert torch.allclose(va, vb, atol=0.1)
    # the image processor built from the config preprocesses exactly as evaluation does, and saves the setting
    proc = ImageVolumeClusteringImageProcessor.from_ssl_config(config)
    out = proc.preprocess_volumes([open(tmp_path / "dark.tif", "rb").read()], volume_depth=6)["pixel_values_volumes"]
    assert torch.allclose(out[0], a, atol=1e-5)
    proc.save_pretrained(tmp_path / "proc")
    assert ImageVolumeClusteringImageProcessor.from_pretrained(tmp_path / "proc").intensity_normalization == "percentile"
    with pytest.raises(ValueError, match="intensity_normalization"):
        ImageVolumeClusteringConfig(backbone_config="resnet-tiny", augmentation={"intensity_normalization": "zscore"})
    # the check is the shared config validation: every volume method refuses bad settings at config time
    from tiny_configs import tiny_config

    for method in ("alice", "nerf_mae"):
        with pytest.raises(ValueError, match="intensity_percentiles"):
            tiny_config(method, augmentation={"intensity_normalization": "percentile", "intensity_percentiles": [99, 1]})
