"""Batched device photometric augmentation: each operation against PIL on a real photo, per-image randomness and
probabilities, the deferred CPU policy, and the trainer path end to end."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

import hf_ssl  # noqa: F401
from hf_ssl.training import device_augment as da
from hf_ssl.training.arguments import SSLTrainingArguments
from hf_ssl.training.data import SSLDataCollator, SSLViewDataset, _adjust_hue, build_view_generator, load_image_stream
from hf_ssl.training.trainer import SSLTrainer
from tiny_configs import tiny_config


def photo(size=48):
    from skimage import data

    return Image.fromarray(data.chelsea()).resize((size, size), Image.BICUBIC)  # a real photo (scikit-image)


def unit(img):
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def close(a, b, mean_tol, max_tol):
    """PIL rounds to 8 bits after each operation: a mean difference of about half a level is the floor."""
    diff = (a - b).abs()
    assert float(diff.mean()) < mean_tol and float(diff.max()) < max_tol, (float(diff.mean()), float(diff.max()))


ONE = torch.ones(1)


@pytest.mark.parametrize("factor", [0.6, 1.4])
def test_brightness_contrast_saturation_match_pil(factor):
    img = photo()
    x, f = unit(img), ONE * factor
    close(da.adjust_brightness(x, f), unit(ImageEnhance.Brightness(img).enhance(factor)), 3e-3, 2.5 / 255)
    close(da.adjust_saturation(x, f), unit(ImageEnhance.Color(img).enhance(factor)), 3e-3, 3.5 / 255)
    # PIL's contrast blends with the integer-rounded mean luma: allow that half level
    close(da.adjust_contrast(x, f), unit(ImageEnhance.Contrast(img).enhance(factor)), 4e-3, 3.5 / 255)


@pytest.mark.parametrize("shift", [-0.08, 0.05, 0.3])
def test_hue_matches_the_cpu_policy(shift):
    img = photo()
    # PIL quantises hue to 256 levels (and saturation/value to 8 bits): compare on average, bounded maximum
    close(da.adjust_hue(unit(img), ONE * shift), unit(_adjust_hue(img, shift)), 6e-3, 0.1)


def test_hsv_round_trip_is_identity():
    x = torch.rand(4, 3, 16, 16)
    assert torch.allclose(da.hsv_to_rgb(da.rgb_to_hsv(x)), x, atol=1e-5)


def test_grayscale_solarize_blur_match_pil():
    img = photo()
    x = unit(img)
    close(da.to_grayscale(x), unit(img.convert("L").convert("RGB")), 3e-3, 1.5 / 255)
    close(da.solarize(x), unit(ImageOps.solarize(img, threshold=128)), 1e-6, 1e-5)
    # PIL approximates the Gaussian with extended box blurs: same blur on average, a few levels apart at most
    sigma = 1.5
    ours = da.gaussian_blur(x, ONE * sigma)
    ref = unit(img.filter(ImageFilter.GaussianBlur(radius=sigma)))
    close(ours, ref, 5e-3, 0.08)
    assert float((ours - x).abs().mean()) > 5 * float((ours - ref).abs().mean())  # it really blurs


def test_per_image_blur_sigma_and_batch_independence():
    x = unit(photo()).repeat(3, 1, 1, 1)
    sig = torch.tensor([0.5, 1.0, 2.0])
    batched = da.gaussian_blur(x, sig, max_sigma=2.0)
    for i in range(3):
        assert torch.allclose(batched[i: i + 1], da.gaussian_blur(x[i: i + 1], sig[i: i + 1], max_sigma=2.0),
                              atol=1e-6)
    assert not torch.allclose(batched[0], batched[2], atol=1e-3)


def test_probabilities_and_identity():
    torch.manual_seed(0)
    x = torch.rand(4000, 3, 4, 4)
    aug = da.DevicePhotometricAugment({"grayscale": 0.2}, [0.0] * 3, [1.0] * 3)
    out = aug.augment_unit(x.clone())
    gray = (out[:, 0] == out[:, 1]).all(dim=(1, 2)) & (out[:, 1] == out[:, 2]).all(dim=(1, 2))
    assert abs(float(gray.float().mean()) - 0.2) < 0.03
    unchanged = (out == x).flatten(1).all(dim=1)
    assert torch.equal(unchanged, ~gray)  # the others are untouched
    none = da.DevicePhotometricAugment({"color_jitter": 0.0}, [0.5] * 3, [0.25] * 3)
    assert torch.allclose(none(x[:8]), x[:8], atol=1e-6)
    masked = da.DevicePhotometricAugment({"solarize": 1.0}, [0.0] * 3, [1.0] * 3)
    keep = torch.tensor([True, False] * 4)
    y = masked(x[:8], mask=keep)
    assert torch.equal(y[~keep], x[:8][~keep]) and torch.allclose(y[keep], da.solarize(x[:8][keep]))


def test_color_jitter_draws_independent_factors_and_orders_per_image():
    torch.manual_seed(0)
    x = unit(photo(16)).repeat(64, 1, 1, 1)
    aug = da.DevicePhotometricAugment({"color_jitter": 1.0, "color_jitter_strength": [0.4, 0.4, 0.4, 0.1]},
                                      [0.0] * 3, [1.0] * 3)
    out = aug.augment_unit(x)
    means = out.mean(dim=(1, 2, 3))
    assert float(means.std()) > 0.01  # every image got its own factors
    assert len(torch.unique(means)) == 64


def test_normalized_in_normalized_out():
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    x01 = unit(photo(16))
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    aug = da.DevicePhotometricAugment({"solarize": 1.0}, mean, std)
    assert torch.allclose(aug((x01 - m) / s), (da.solarize(x01) - m) / s, atol=1e-5)
    with pytest.raises(ValueError, match="channels"):
        aug(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="probability"):
        da.DevicePhotometricAugment({"grayscale": 1.5}, mean, std)


def test_deferred_policy_skips_photometric_ops_and_flags_examples():
    config = tiny_config("swav", augmentation={"num_global": 2, "num_local": 2, "local_size": 16,
                                               "grayscale": 1.0, "color_jitter": 1.0})
    img = photo(40)
    cpu = build_view_generator(config)
    dev = build_view_generator(config, device_photometric=True)
    a = cpu(img, np.random.default_rng(0))
    b = dev(img, np.random.default_rng(0))
    assert "photometric_on_device" not in a and b["photometric_on_device"] is True
    v = b["pixel_values"][0] * torch.tensor(config.image_std).view(3, 1, 1) + torch.tensor(config.image_mean).view(3, 1, 1)
    assert not torch.allclose(v[0], v[1], atol=1e-3)  # colour kept: no grayscale on the CPU side
    w = a["pixel_values"][0] * torch.tensor(config.image_std).view(3, 1, 1) + torch.tensor(config.image_mean).view(3, 1, 1)
    assert torch.allclose(w[0], w[1], atol=1e-5)  # the CPU path did grayscale
    # a policy that does not support deferral keeps the CPU path (ChAda-ViT post-processes its parent's views)
    chada = build_view_generator(tiny_config("chada_vit"), device_photometric=True)
    assert not chada.device_photometric


def test_trainer_applies_device_augmentation_to_flagged_batches(tmp_path):
    config = tiny_config("swav", augmentation={"num_global": 2, "num_local": 2, "local_size": 16,
                                               "grayscale": 1.0, "color_jitter": 0.0, "gaussian_blur": 0.0,
                                               "solarize": 0.0})
    from hf_ssl.modeling.registry import get_method

    torch.manual_seed(0)
    model = get_method("swav").model_class(config)
    seen = []
    original = model.forward

    def spy(pixel_values=None, **kwargs):
        seen.append([v.detach().clone() for v in pixel_values])
        return original(pixel_values=pixel_values, **kwargs)

    model.forward = spy
    from skimage import data

    root = tmp_path / "photos" / "0"  # colour photos (the digits are gray already)
    root.mkdir(parents=True)
    for i, name in enumerate(["chelsea", "coffee", "astronaut", "rocket"] * 2):
        arr = getattr(data, name)()
        Image.fromarray(arr).resize((40 + i, 40), Image.BICUBIC).save(root / f"{i}.png")
    ds = SSLViewDataset(load_image_stream(str(tmp_path / "photos"), shuffle_buffer=0),
                        build_view_generator(config, device_photometric=True))
    first = next(iter(ds))["pixel_values"][0] * torch.tensor(config.image_std).view(3, 1, 1)
    assert not torch.allclose(first[0], first[1] + (torch.tensor(config.image_mean)[1] - config.image_mean[0]),
                              atol=1e-2)  # the CPU side left the colour in
    batch = SSLDataCollator()([next(iter(ds)) for _ in range(1)])
    assert batch["photometric_on_device"].dtype == torch.long and int(batch["photometric_on_device"][0]) == 1
    args = SSLTrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4,
                                save_strategy="no", logging_steps=1, disable_tqdm=True)
    SSLTrainer(model=model, args=args, train_dataset=ds).train()
    assert len(seen) == 2
    std = torch.tensor(config.image_std).view(1, 3, 1, 1)
    mean = torch.tensor(config.image_mean).view(1, 3, 1, 1)
    for views in seen:
        for v in views:
            rgb = v * std + mean
            assert torch.allclose(rgb[:, 0], rgb[:, 1], atol=1e-4) and torch.allclose(rgb[:, 1], rgb[:, 2], atol=1e-4)
