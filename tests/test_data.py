"""Streaming sources, decoding with the corrupt-sample policy, view policies and collation."""

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from hf_ssl.modeling.base import SSLConfig
from hf_ssl.training.data import (
    SSLDataCollator, SSLViewDataset, UndecodableImage, build_view_generator, decode_image, load_image_stream,
    materialize_builtin, random_resized_crop_box,
)

TINY_RESNET = dict(model_type="resnet", layer_type="basic", depths=[1, 1], hidden_sizes=[8, 16], embedding_size=8)
TINY_VIT = dict(model_type="vit", hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                patch_size=8)


def _png_bytes(seed, size=(40, 30)):
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def folder_with_bad_images(tmp_path):
    root = tmp_path / "imgs"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(5):
            (root / label / f"{i}.png").write_bytes(_png_bytes(i + (10 if label == "b" else 0)))
    (root / "a" / "zero.png").write_bytes(b"")  # zero-byte file
    (root / "b" / "corrupt.png").write_bytes(_png_bytes(99)[:60])  # truncated PNG
    (root / "b" / "garbage.jpg").write_bytes(b"this is not an image at all" * 10)
    return root


def test_builtin_digits_is_real_labeled_data():
    path = materialize_builtin("digits")
    train = sum(len(files) for _, _, files in os.walk(os.path.join(path, "train")))
    test = sum(len(files) for _, _, files in os.walk(os.path.join(path, "test")))
    assert (train, test) == (1497, 300)
    ds = load_image_stream("builtin:digits", split="test", shuffle_buffer=0)
    labels = [ex["label"] for ex in ds]
    assert len(labels) == 300 and np.bincount(labels).tolist() == [30] * 10
    img = decode_image(next(iter(ds))["image"])
    assert img.size == (32, 32) and img.mode == "RGB"


def test_decode_image_errors_are_clear():
    with pytest.raises(UndecodableImage, match="empty"):
        decode_image({"bytes": b"", "path": None})
    with pytest.raises(UndecodableImage):
        decode_image(b"not an image")
    assert decode_image(_png_bytes(0)).size == (40, 30)


def test_corrupt_and_zero_byte_images_are_skipped_and_counted(folder_with_bad_images):
    cfg = SSLConfig(backbone_config=TINY_RESNET, image_size=32)
    stream = load_image_stream(str(folder_with_bad_images), shuffle_buffer=0)
    ds = SSLViewDataset(stream, build_view_generator(cfg))
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=SSLDataCollator())
    batches = list(loader)
    good = sum(len(b["pixel_values"][0]) for b in batches if "pixel_values" in b)
    skipped = sum(int(b["num_skipped"]) for b in batches)
    assert good == 10 and skipped == 3  # nothing silently lost: 13 files = 10 views + 3 counted skips


def test_skip_count_survives_dataloader_workers(folder_with_bad_images):
    cfg = SSLConfig(backbone_config=TINY_RESNET, image_size=32)
    ds = SSLViewDataset(load_image_stream(str(folder_with_bad_images), shuffle_buffer=0), build_view_generator(cfg))
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=SSLDataCollator(), num_workers=1)
    batches = list(loader)
    assert sum(int(b["num_skipped"]) for b in batches) == 3


def test_parquet_and_webdataset_sources(tmp_path):
    import tarfile

    import datasets

    rows = {"image": [{"bytes": _png_bytes(i), "path": None} for i in range(6)], "label": [0, 1, 0, 1, 0, 1]}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["x", "y"])})
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / "train-00000.parquet"))
    ds = load_image_stream(str(tmp_path), shuffle_buffer=0)
    examples = list(ds)
    assert len(examples) == 6 and decode_image(examples[0]["image"]).size == (40, 30)

    shard = tmp_path / "wds" / "train-000.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w") as tar:
        for i in range(4):
            for ext, data in (("png", _png_bytes(i)), ("cls", str(i % 2).encode())):
                info = tarfile.TarInfo(f"sample{i:03d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    wds = load_image_stream(str(shard.parent), shuffle_buffer=0)
    examples = list(wds)
    assert len(examples) == 4
    cfg = SSLConfig(backbone_config=TINY_RESNET, image_size=32)
    views = list(SSLViewDataset(wds, build_view_generator(cfg)))
    assert len(views) == 4 and views[0]["pixel_values"][0].shape == (3, 32, 32)


def test_multi_crop_and_collation():
    from hf_ssl.training.data import MultiCropPolicy

    cfg = SSLConfig(backbone_config=TINY_RESNET, image_size=32,
                    augmentation={"policy": "multi_crop", "num_global": 2, "num_local": 3, "local_size": 16})
    policy = build_view_generator(cfg)
    assert isinstance(policy, MultiCropPolicy)
    img = decode_image(_png_bytes(1, (64, 48)))
    rng = np.random.default_rng(0)
    examples = [dict(policy(img, rng), num_skipped=0) for _ in range(5)]
    batch = SSLDataCollator()(examples)
    shapes = [tuple(v.shape) for v in batch["pixel_values"]]
    assert shapes == [(5, 3, 32, 32)] * 2 + [(5, 3, 16, 16)] * 3
    # views are normalized with the config statistics: roughly zero-centred, not in [0, 1]
    assert batch["pixel_values"][0].min() < 0


def test_masked_policy_gives_exact_mask_counts():
    cfg = SSLConfig(backbone_config=TINY_VIT, image_size=32,
                    augmentation={"policy": "masked", "mask": "block", "mask_ratio": 0.5, "min_block_patches": 2})
    policy = build_view_generator(cfg)
    img = decode_image(_png_bytes(2, (50, 50)))
    rng = np.random.default_rng(0)
    for _ in range(10):
        out = policy(img, rng)
        assert out["bool_masked_pos"].shape == (16,) and int(out["bool_masked_pos"].sum()) == 8


def test_random_resized_crop_respects_scale_and_bounds():
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, w, h = random_resized_crop_box(100, 80, (0.2, 0.5), rng=rng)
        assert 0 <= left and 0 <= top and left + w <= 100 and top + h <= 80
        assert 0.15 <= w * h / 8000 <= 0.55


def test_view_generator_is_deterministic_given_seed():
    cfg = SSLConfig(backbone_config=TINY_RESNET, image_size=32)
    policy = build_view_generator(cfg)
    img = decode_image(_png_bytes(3, (48, 48)))
    a = policy(img, np.random.default_rng(5))["pixel_values"][0]
    b = policy(img, np.random.default_rng(5))["pixel_values"][0]
    c = policy(img, np.random.default_rng(6))["pixel_values"][0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_unknown_policy_and_bad_channels_raise():
    cfg = SSLConfig(backbone_config=TINY_RESNET, image_size=32, augmentation={"policy": "nope"})
    with pytest.raises(ValueError, match="Unknown view policy"):
        build_view_generator(cfg)
    with pytest.raises(ValueError, match="num_channels"):
        SSLConfig(backbone_config=dict(TINY_RESNET, num_channels=4), image_size=32, num_channels=3)


def test_builtin_registry_and_concurrent_materialisation(tmp_path):
    """Every built-in is registered in one table; two processes materialising the same one at once build it once
    and both get a complete folder (the inter-process lock), as pytest-xdist workers or DDP ranks do."""
    import subprocess
    import sys

    from hf_ssl.training.data import available_builtin_datasets

    names = available_builtin_datasets()
    assert {"digits", "moving_digits", "digits3d", "shapes3d", "radiance_shapes3d"} <= set(names)
    with pytest.raises(ValueError, match="available"):
        materialize_builtin("no_such_builtin")
    code = ("import os, sys; from hf_ssl.training.data import materialize_builtin; "
            "out = materialize_builtin('digits', sys.argv[1]); "
            "print(sum(len(f) for _, _, f in os.walk(out)))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    counts = [int(p.communicate(timeout=300)[0].strip()) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert counts == [1797 + 1, 1797 + 1]  # every image plus the .complete marker, in both processes
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
