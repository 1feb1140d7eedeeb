"""Gaussian-random-field augmentations (training/random_fields.py) and their hook in `ImageAugment`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

import hf_ssl  # noqa: F401
from hf_ssl.training import random_fields as rf
from hf_ssl.training.data import ImageAugment, _augment_kwargs, build_view_generator


def _photo(size=48):
    import skimage.data

    return Image.fromarray(skimage.data.chelsea()).resize((size, size), Image.BICUBIC)


def _neighbour_corr(fields):
    a, b = fields[:, :, :-1].ravel(), fields[:, :, 1:].ravel()
    return float(np.corrcoef(a, b)[0, 1])


# ------------------------------------------------------------------------------------------------- GRF
@pytest.mark.parametrize("std", [1.0, 0.3])
def test_grf_zero_mean_and_target_variance(std):
    f = rf.gaussian_random_field((32, 32), 1.5, np.random.default_rng(0), num_fields=400, std=std).astype(np.float64)
    assert f.shape == (400, 32, 32) and f.dtype == np.float64
    assert abs(f.mean()) < 0.03 * std
    assert f.var() == pytest.approx(std ** 2, rel=0.05)
    # per-pixel variance is stationary: the border pixels are as variable as the centre ones (padding works)
    assert f[:, 0, 0].var() == pytest.approx(std ** 2, rel=0.25)
    assert f[:, 16, 16].var() == pytest.approx(std ** 2, rel=0.25)


def test_grf_smoothness_grows_with_length_scale_and_matches_covariance():
    rng = np.random.default_rng(1)
    corrs = [_neighbour_corr(rf.gaussian_random_field((32, 32), ell, rng, num_fields=100)) for ell in (0.5, 1.5, 3, 6)]
    assert all(a < b for a, b in zip(corrs, corrs[1:])), corrs
    # squared-exponential covariance: corr(lag) = exp(-lag^2 / (2 ell^2))
    f = rf.gaussian_random_field((32, 32), 3.0, rng, num_fields=300)
    for lag in (1, 3, 6):
        c = float(np.corrcoef(f[:, :, :-lag].ravel(), f[:, :, lag:].ravel())[0, 1])
        assert c == pytest.approx(math.exp(-lag ** 2 / 18.0), abs=0.05)
    # the padding removes the FFT wrap-around: opposite borders are uncorrelated
    wrap = float(np.corrcoef(f[:, :, 0].ravel(), f[:, :, -1].ravel())[0, 1])
    assert abs(wrap) < 0.05


def test_coarse_grid_fields_keep_the_statistics():
    # long length scales are sampled on a coarse grid and upsampled: same variance and covariance (within ~3%)
    rng = np.random.default_rng(2)
    f = rf.smooth_random_fields((64, 64), 24.0, rng, num_fields=200).astype(np.float64)
    assert f.shape == (200, 64, 64)
    assert abs(f.mean()) < 0.1 and f.var() == pytest.approx(1.0, rel=0.1)
    for lag in (1, 12, 24):
        c = float(np.corrcoef(f[:, :, :-lag].ravel(), f[:, :, lag:].ravel())[0, 1])
        assert c == pytest.approx(math.exp(-lag ** 2 / (2 * 24.0 ** 2)), abs=0.05)
    # short length scales take the exact path
    np.testing.assert_array_equal(rf.smooth_random_fields((16, 16), 3.0, np.random.default_rng(0), 2),
                                  rf.gaussian_random_field((16, 16), 3.0, np.random.default_rng(0), 2))


def test_grf_fields_are_independent_and_seeded():
    f = rf.gaussian_random_field((24, 24), 2.0, np.random.default_rng(3), num_fields=200)
    c = float(np.corrcoef(f[0::2].ravel(), f[1::2].ravel())[0, 1])
    assert abs(c) < 0.05
    g = rf.gaussian_random_field((24, 24), 2.0, np.random.default_rng(3), num_fields=200)
    np.testing.assert_array_equal(f, g)
    assert not np.array_equal(f, rf.gaussian_random_field((24, 24), 2.0, np.random.default_rng(4), num_fields=200))


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_grf_rejects_bad_length_scale(bad):
    with pytest.raises(ValueError, match="length_scale"):
        rf.gaussian_random_field((8, 8), bad, np.random.default_rng(0))


# ------------------------------------------------------------------------------------------------- warp / colour
def test_zero_displacement_warp_is_exact_and_constant_image_stays_constant():
    rng = np.random.default_rng(0)
    img = rng.random((17, 23, 3)).astype(np.float32)
    np.testing.assert_array_equal(rf.warp_bilinear(img, np.zeros((2, 17, 23))), img)
    # integer shift by +1 column == the image shifted (interior), reflected at the border
    d = np.zeros((2, 17, 23))
    d[1] = 1.0
    shifted = rf.warp_bilinear(img, d)
    np.testing.assert_allclose(shifted[:, :-1], img[:, 1:], atol=1e-6)
    np.testing.assert_allclose(shifted[:, -1], img[:, -2], atol=1e-6)
    const = np.full((32, 32, 3), 0.37, np.float32)
    disp = rf.random_affine_displacement((32, 32), rng, strength=3.0, length_scale=4.0)
    assert np.abs(disp).max() > 1.0  # a real (large) deformation
    np.testing.assert_allclose(rf.warp_bilinear(const, disp), const, atol=1e-6)
    gray_const = Image.new("L", (32, 32), 90)
    out = rf.random_field_augment(gray_const, rng, affine_strength=3.0, color_strength=0.0, length_scale=0.2)
    assert np.all(np.asarray(out) == 90)


def test_affine_with_infinite_length_scale_is_a_global_affine():
    # a very long length scale gives constant fields: the displacement is affine in the pixel coordinates
    d = rf.random_affine_displacement((16, 16), np.random.default_rng(0), strength=1.0, length_scale=1e6)
    assert np.abs(d).max() > 1.0
    ys, xs = np.meshgrid(np.arange(16.0), np.arange(16.0), indexing="ij")
    design = np.stack([xs.ravel(), ys.ravel(), np.ones(256)], 1)
    for comp in d:
        coef, *_ = np.linalg.lstsq(design, comp.ravel(), rcond=None)
        np.testing.assert_allclose(design @ coef, comp.ravel(), atol=1e-4)


def test_strength_zero_is_exact_identity_and_draws_nothing():
    img = _photo()
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    out = rf.random_field_augment(img, rng, affine_strength=0.0, color_strength=0.0)
    assert out is img and rng.bit_generator.state == state
    arr = np.asarray(img, np.float32) / 255
    np.testing.assert_array_equal(rf.warp_bilinear(arr, rf.random_affine_displacement((48, 48), rng, 0.0, 5.0)), arr)
    np.testing.assert_allclose(rf.random_color_fields(arr, rng, 0.0, 5.0), arr, atol=1e-6)


def test_strength_scales_the_change_and_output_shape_dtype():
    img = _photo()
    base = np.asarray(img, np.float64)
    diffs = []
    for s in (0.25, 1.0, 3.0):
        out = rf.random_field_augment(img, np.random.default_rng(5), affine_strength=s, color_strength=s)
        assert out.mode == "RGB" and out.size == img.size
        arr = np.asarray(out)
        assert arr.dtype == np.uint8 and arr.shape == (48, 48, 3)
        diffs.append(np.abs(arr - base).mean())
    assert 0 < diffs[0] < diffs[1] < diffs[2]
    gray = rf.random_field_augment(img.convert("L"), np.random.default_rng(0))
    assert gray.mode == "L" and gray.size == img.size


def test_colour_fields_preserve_grey_under_hue_and_saturation():
    # a grey image has no chroma: hue rotation and saturation do nothing; only contrast/brightness act
    grey = np.full((16, 16, 3), 0.5, np.float32)
    out = rf.random_color_fields(grey, np.random.default_rng(0), 1.0, 4.0,
                                 stds={"contrast": 0.0, "brightness": 0.0})
    np.testing.assert_allclose(out, grey, atol=1e-5)
    bright = rf.random_color_fields(grey, np.random.default_rng(0), 1.0, 4.0,
                                    stds={"hue": 0.0, "saturation": 0.0, "contrast": 0.0})
    assert np.allclose(bright[..., 0], bright[..., 1]) and bright.std() > 0.01  # still grey, spatially varying


def test_determinism_with_seed():
    img = _photo()
    a = rf.random_field_augment(img, np.random.default_rng(11))
    b = rf.random_field_augment(img, np.random.default_rng(11))
    c = rf.random_field_augment(img, np.random.default_rng(12))
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


# ------------------------------------------------------------------------------------------------- ImageAugment hook
MEAN, STD = [0.5] * 3, [0.25] * 3


def test_image_augment_without_keys_is_unchanged():
    img = _photo(40)
    aug = {"horizontal_flip": 0.5, "color_jitter": 0.8, "grayscale": 0.2, "gaussian_blur": 0.5}
    plain = ImageAugment(32, (0.3, 1.0), MEAN, STD, **_augment_kwargs(aug))
    off = ImageAugment(32, (0.3, 1.0), MEAN, STD, **_augment_kwargs(dict(aug, random_field=0.0)))
    for seed in range(5):
        r1, r2 = np.random.default_rng(seed), np.random.default_rng(seed)
        assert torch.equal(plain(img, r1), off(img, r2))
        assert r1.bit_generator.state == r2.bit_generator.state  # probability 0 draws nothing


def test_image_augment_applies_random_field_after_crop():
    img = _photo(40)
    keys = {"random_field": 1.0, "random_field_affine_strength": 2.0, "random_field_color_strength": 1.0,
            "random_field_length_scale": 0.3}
    kwargs = _augment_kwargs(dict(keys, horizontal_flip=0.0, unrelated_key=1))
    assert set(kwargs) == set(keys) | {"horizontal_flip"}
    view = ImageAugment(32, (0.5, 1.0), MEAN, STD, **kwargs)
    x = view(img, np.random.default_rng(0))
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(x, view(img, np.random.default_rng(0)))
    # same crop, then the field: equals the manual composition
    rng = np.random.default_rng(0)
    from hf_ssl.training.data import random_resized_crop_box, to_normalized_tensor

    left, top, w, h = random_resized_crop_box(40, 40, (0.5, 1.0), rng=rng)
    crop = img.resize((32, 32), Image.BICUBIC, box=(left, top, left + w, top + h))
    assert rng.random() < 1.0
    manual = rf.random_field_augment(crop, rng, affine_strength=2.0, color_strength=1.0, length_scale=0.3)
    rng.random()  # the flip draw
    expected = to_normalized_tensor(manual, np.asarray(MEAN, np.float32).reshape(-1, 1, 1),
                                    np.asarray(STD, np.float32).reshape(-1, 1, 1))
    assert torch.equal(x, expected)
    assert not torch.equal(x, to_normalized_tensor(crop, np.asarray(MEAN, np.float32).reshape(-1, 1, 1),
                                                   np.asarray(STD, np.float32).reshape(-1, 1, 1)))


@pytest.mark.parametrize("bad, match", [
    ({"random_field": 1.5}, "probability"),
    ({"random_field": 0.5, "random_field_affine_strength": -1}, "affine_strength"),
    ({"random_field": 0.5, "random_field_color_strength": float("nan")}, "color_strength"),
    ({"random_field": 0.5, "random_field_length_scale": 0.0}, "length_scale"),
])
def test_bad_random_field_settings_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        ImageAugment(32, (0.5, 1.0), MEAN, STD, **_augment_kwargs(bad))


def test_swav_trains_a_step_with_random_fields(tmp_path):
    from tiny_configs import tiny_config

    from hf_ssl.modeling.registry import get_method
    from hf_ssl.training.arguments import SSLTrainingArguments
    from hf_ssl.training.data import SSLViewDataset, load_image_stream
    from hf_ssl.training.trainer import SSLTrainer

    aug = {"num_global": 2, "num_local": 2, "local_size": 16, "random_field": 1.0,
           "random_field_affine_strength": 1.0, "random_field_color_strength": 1.0, "random_field_length_scale": 0.25}
    config = tiny_config("swav", augmentation=aug)
    views = build_view_generator(config)
    assert views.global_view.random_field == 1.0 and views.local_view.random_field == 1.0
    example = views(_photo(40), np.random.default_rng(0))
    assert [tuple(v.shape) for v in example["pixel_values"]] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 2
    torch.manual_seed(0)
    model = get_method("swav").model_class(config)
    before = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    ds = SSLViewDataset(load_image_stream("builtin:digits", seed=0, shuffle_buffer=16), views, seed=0)
    args = SSLTrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=8,
                                learning_rate=1e-3, logging_steps=1, save_strategy="no", disable_tqdm=True,
                                report_to=[])
    result = SSLTrainer(model=model, args=args, train_dataset=ds).train()
    assert math.isfinite(result.training_loss)
    after = model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
