"""MFM (Masked Frequency Modeling) invariants on tiny ResNet / ViT encoders (CPU, 32 px images)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import hf_ssl  # noqa: F401
from hf_ssl.modeling.backbones import encode
from hf_ssl.modeling.mfm import METHOD, MFMConfig, MFMForSelfSupervisedPretraining
from hf_ssl.modeling.mfm.modeling_mfm import (centred_spectrum, filter_masks, frequency_corrupt, frequency_distance,
                                              masked_frequency_loss)

TINY_RESNET = dict(model_type="resnet", layer_type="basic", depths=[1, 1], hidden_sizes=[8, 16], embedding_size=8)
TINY_VIT = dict(model_type="vit", hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                patch_size=8)
BACKBONES = {"resnet": TINY_RESNET, "vit": TINY_VIT}


def make_model(backbone="resnet", seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs.setdefault("mask_radius", 4)
    return MFMForSelfSupervisedPretraining(MFMConfig(backbone_config=dict(BACKBONES[backbone]), image_size=32, **kwargs))


def images(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 32, 32, generator=g)


def test_filter_masks_match_official_geometry():
    size, radius = 224, 16
    masks = filter_masks(size, size, radius)
    # official FreqMaskGenerator: ones where (x-c)^2 + (y-c)^2 < r^2 (kept by the low-pass filter)
    keep_low = np.zeros((size, size), dtype=bool)
    for y in range(size):
        for x in range(size):
            keep_low[y, x] = (x - size // 2) ** 2 + (y - size // 2) ** 2 < radius**2
    assert torch.equal(masks[0], torch.from_numpy(~keep_low))  # low-pass removes the outside
    assert torch.equal(masks[1], torch.from_numpy(keep_low))  # high-pass removes the inside
    assert int(keep_low.sum()) == 797 - 4  # lattice points with d < 16 (the 4 at d = 16 are excluded)
    assert not masks[0][112, 112] and masks[1][112, 112]  # zero frequency sits at the centre
    assert not masks[1][112, 112 + 16] and masks[0][112, 112 + 16]  # distance exactly r is "high"


def test_generated_masks_are_low_or_high_pass_with_configured_probability():
    model = make_model("vit")
    assert model.config.resolved_low_pass_prob == 0.5
    assert make_model("resnet").config.resolved_low_pass_prob == 0.3  # official ResNet-50 SAMPLE_RATIO
    m = model.generate_frequency_mask(4000, (32, 32), generator=torch.Generator().manual_seed(0))
    low, high = filter_masks(32, 32, 4)
    is_low = (m == low).flatten(1).all(1)
    is_high = (m == high).flatten(1).all(1)
    assert bool((is_low ^ is_high).all())
    assert abs(is_low.float().mean().item() - 0.5) < 0.03
    m = make_model("resnet", low_pass_prob=0.0).generate_frequency_mask(50, (32, 32))
    assert torch.equal(m, high.expand(50, -1, -1))


def test_fft_roundtrip_of_unmasked_image_is_identity():
    x01 = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    nothing = torch.zeros(2, 32, 32, dtype=torch.bool)
    assert torch.allclose(frequency_corrupt(x01, nothing), x01, atol=1e-5)
    model = make_model()
    x = images()
    xn = (x.clamp(-1.5, 1.5))  # stays inside [0, 1] image space for ImageNet mean/std
    assert torch.allclose(model.corrupt(xn, nothing), xn, atol=1e-4)
    everything = torch.ones(2, 32, 32, dtype=torch.bool)
    assert torch.allclose(frequency_corrupt(x01, everything), torch.zeros_like(x01), atol=1e-6)
    # low-pass + high-pass parts add back to the image (before clamping)
    low, high = filter_masks(32, 32, 4)
    parts = frequency_corrupt(x01, low.expand(2, -1, -1), clamp=False) + frequency_corrupt(
        x01, high.expand(2, -1, -1), clamp=False)
    assert torch.allclose(parts, x01, atol=1e-5)


def _replace_frequencies(target, where, source):
    """target with its centred spectrum replaced by source's at `where` [H, W] (symmetric masks -> real image)."""
    spec = torch.where(where, centred_spectrum(source.double()), centred_spectrum(target.double()))
    out = torch.fft.ifft2(torch.fft.ifftshift(spec, dim=(-2, -1)))
    assert out.imag.abs().max() < 1e-9
    return out.real.float()


@pytest.mark.parametrize("kind", [0, 1])
def test_loss_uses_only_masked_frequencies(kind):
    model = make_model()
    removed = filter_masks(32, 32, 4)[kind].expand(2, -1, -1)
    pred, target, other = images(2, 1), images(2, 2), images(2, 3)
    base = model.loss_from_prediction(pred, target, removed)
    kept_changed = _replace_frequencies(target, ~removed[0], other)
    assert not torch.allclose(kept_changed, target)
    assert torch.allclose(model.loss_from_prediction(pred, kept_changed, removed), base, atol=1e-5)
    removed_changed = _replace_frequencies(target, removed[0], other)
    assert not torch.allclose(model.loss_from_prediction(pred, removed_changed, removed), base, atol=1e-3)
    # recover_target="all" (official "normal") does see the kept frequencies
    full = make_model(recover_target="all")
    assert not torch.allclose(full.loss_from_prediction(pred, kept_changed, removed),
                              full.loss_from_prediction(pred, target, removed), atol=1e-3)


def test_loss_value_hand_computed():
    # prediction = target + c in channel 0: the orthonormal spectra differ only at the zero frequency, by c*sqrt(HW)
    model = make_model()
    target = images(1)
    pred = target.clone()
    c = 0.5
    pred[:, 0] += c
    high = filter_masks(32, 32, 4)[1].unsqueeze(0)  # removes the low frequencies, incl. the zero frequency
    n_removed = int(high.sum())
    expected = (c * 32 + (3 * n_removed - 1) * 1e-6) / n_removed / 3
    assert torch.allclose(model.loss_from_prediction(pred, target, high), torch.tensor(expected), atol=1e-6)
    low = filter_masks(32, 32, 4)[0].unsqueeze(0)  # zero frequency kept -> only the sqrt(1e-12) floor remains
    assert model.loss_from_prediction(pred, target, low).item() < 2e-6
    # loss_gamma=2 squares the distance
    d1 = frequency_distance(pred, target, 1.0)
    d2 = frequency_distance(pred, target, 2.0)
    assert torch.allclose(d2, d1**2, atol=1e-6)
    assert torch.allclose(masked_frequency_loss(d1, None), d1.mean())
    # focal weighting: weights in [0, 1], the largest distance keeps weight 1
    df = frequency_distance(pred, target, 1.0, focal_weighting=True)
    assert torch.allclose(df[0, 0, 16, 16], d1[0, 0, 16, 16], atol=1e-5)
    assert (df <= d1 + 1e-7).all()


@pytest.mark.parametrize("backbone", ["resnet", "vit"])
def test_encoder_sees_only_kept_frequencies(backbone):
    model = make_model(backbone, clamp_corrupted=False)
    model.eval()
    removed = filter_masks(32, 32, 4)[0].expand(2, -1, -1)
    x = images()
    out = model(x, frequency_mask=removed)
    x2 = _replace_frequencies(x, removed[0], images(2, 9))
    out2 = model(x2, frequency_mask=removed)
    assert torch.allclose(out.logits, out2.logits, atol=1e-4)  # same corrupted input
    assert not torch.allclose(out.loss, out2.loss)  # different target on the removed frequencies
    x3 = _replace_frequencies(x, ~removed[0], images(2, 9))
    assert not torch.allclose(model(x3, frequency_mask=removed).logits, out.logits, atol=1e-4)


@pytest.mark.parametrize("backbone", ["resnet", "vit"])
def test_few_steps_reduce_loss(backbone):
    model = make_model(backbone)
    model.train()
    x = images(4, seed=3)
    removed = torch.stack([filter_masks(32, 32, 4)[i % 2] for i in range(4)])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        out = model(x, frequency_mask=removed)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.85 * losses[0], losses
    assert out.logits.shape == x.shape and out.embeddings.shape[0] == 4 and not out.embeddings.requires_grad
    assert set(out.metrics) == {"frequency_loss", "low_pass_fraction"}
    assert out.metrics["low_pass_fraction"].item() == 0.5


def test_decoder_is_linear_pixel_shuffle_head():
    m = make_model("vit")
    assert m.encoder_stride == 8 and m.decoder[0].out_channels == 8 * 8 * 3 and m.decoder[0].kernel_size == (1, 1)
    r = make_model("resnet")
    assert r.encoder_stride == 8 and r.decoder[0].in_channels == 16
    assert MFMConfig(backbone_config="resnet-50").backbone_config.hidden_sizes[-1] == 2048
    assert MFMForSelfSupervisedPretraining.__init__  # ResNet-50: Conv2d(2048, 32*32*3, 1) + PixelShuffle(32)
    from hf_ssl.modeling.backbones import feature_stride

    assert feature_stride(MFMConfig(backbone_config="resnet-50").backbone_config) == 32
    assert feature_stride(MFMConfig().backbone_config) == 16


def test_view_policy_gives_crop_and_mask():
    from PIL import Image

    from hf_ssl.training.data import SSLDataCollator, build_view_generator

    model = make_model("vit")
    policy = build_view_generator(model.config)
    img = Image.fromarray((np.random.default_rng(0).random((40, 48, 3)) * 255).astype("uint8"))
    rng = np.random.default_rng(0)
    batch = SSLDataCollator()([policy(img, rng) for _ in range(6)])
    assert batch["pixel_values"].shape == (6, 3, 32, 32) and batch["frequency_mask"].shape == (6, 32, 32)
    out = model(**{k: v for k, v in batch.items() if k != "num_skipped"})
    assert torch.isfinite(out.loss)


def test_save_load_and_defaults(tmp_path):
    from transformers import AutoConfig, AutoModel

    model = make_model("vit", loss_gamma=2.0)
    model.eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, MFMForSelfSupervisedPretraining)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), MFMConfig)
    removed = filter_masks(32, 32, 4)[1].expand(2, -1, -1)
    a, b = model(images(), frequency_mask=removed), loaded.eval()(images(), frequency_mask=removed)
    assert torch.allclose(a.loss, b.loss) and torch.allclose(a.logits, b.logits)
    d = MFMConfig()
    assert (d.mask_radius, d.resolved_low_pass_prob, d.loss_gamma, d.focal_weighting, d.recover_target) == (
        16, 0.5, 1.0, False, "masked")
    assert d.augmentation["crop_scale"] == [0.2, 1.0] and d.backbone_config.patch_size == 16
    assert METHOD.name == "mfm" and "cpu-demo" in METHOD.presets


@pytest.mark.parametrize("backbone", ["resnet", "vit"])
def test_export_encoder_loads_without_hf_ssl(tmp_path, backbone):
    model = make_model(backbone)
    model.eval()
    export_dir = tmp_path / "exported"
    model.export_encoder(export_dir)
    x = images(3)
    torch.save(x, tmp_path / "x.pt")
    expected = model.get_image_features(x)
    script = textwrap.dedent(f"""
        import sys
        sys.modules["hf_ssl"] = None
        import torch
        from transformers import AutoModel
        m = AutoModel.from_pretrained({str(export_dir)!r}).eval()
        x = torch.load({str(tmp_path / 'x.pt')!r})
        with torch.no_grad():
            out = m(pixel_values=x)
        feats = out.pooler_output.flatten(1) if {backbone!r} == "resnet" else out.last_hidden_state[:, 0]
        torch.save(feats, {str(tmp_path / 'feats.pt')!r})
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert torch.allclose(torch.load(tmp_path / "feats.pt"), expected, atol=1e-5)
    assert torch.allclose(expected, encode(model.encoder, x, "cls"), atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(mask_radius=0), "mask_radius"),
    (dict(mask_radius=100), "mask_radius"),
    (dict(low_pass_prob=1.5), "low_pass_prob"),
    (dict(loss_gamma=0), "loss_gamma"),
    (dict(recover_target="pixels"), "recover_target"),
    (dict(image_size=36), "divisible"),
])
def test_nonsense_configs_raise(kwargs, match):
    kwargs.setdefault("image_size", 32)
    with pytest.raises(ValueError, match=match):
        MFMConfig(backbone_config=dict(TINY_VIT), **kwargs)


def test_bad_inputs_raise_clearly():
    model = make_model()
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="frequency_mask"):
        model(images(), frequency_mask=torch.zeros(2, 16, 16, dtype=torch.bool))
    out = model(images(), frequency_mask=filter_masks(32, 32, 4)[0])  # one [H, W] mask for the whole batch
    assert torch.isfinite(out.loss)
