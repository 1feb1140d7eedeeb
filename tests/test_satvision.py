"""SatVision-TOA (SimMIM on multi-band data) invariants: tiny SwinV2 / ViT, 14 bands, 32 px (CPU)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import hf_ssl  # noqa: F401
from hf_ssl.modeling.masking import upsampled_random_mask
from hf_ssl.modeling.satvision import (METHOD, SatVisionConfig, SatVisionForSelfSupervisedPretraining,
                                       SatVisionImageProcessor)
from hf_ssl.modeling.satvision.modeling_satvision import patch_mask_to_pixels

BANDS = 14
TINY_SWIN = dict(model_type="swinv2", embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4, patch_size=2)
TINY_VIT = dict(model_type="vit", hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                patch_size=4)
BACKBONES = {"swinv2": TINY_SWIN, "vit": TINY_VIT}


def make_config(backbone="swinv2", **kwargs):
    kwargs.setdefault("num_channels", BANDS)
    kwargs.setdefault("mask_patch_size", 8)
    return SatVisionConfig(backbone_config=dict(BACKBONES[backbone]), image_size=32, **kwargs)


def make_model(backbone="swinv2", seed=0, **kwargs):
    torch.manual_seed(seed)
    return SatVisionForSelfSupervisedPretraining(make_config(backbone, **kwargs))


def chips(batch=2, seed=0, bands=BANDS):
    return torch.randn(batch, bands, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("ratio", [0.6, 0.3, 0.75])
def test_mask_ratio_exact_and_upsampled(ratio):
    model = make_model(mask_ratio=ratio)  # patch 2 -> 16x16 patch grid; mask cells of 8 px -> 4x4 coarse grid
    mask = model.generate_mask(50)
    assert mask.shape == (50, 256)
    assert (mask.sum(1) == math.ceil(16 * ratio) * 16).all()  # ceil(n * ratio) cells x (8/2)^2 patches each
    grid = mask.view(50, 4, 4, 4, 4).permute(0, 1, 3, 2, 4)  # [B, coarse_h, coarse_w, 4, 4]
    assert ((grid.all(-1).all(-1)) | (~grid.any(-1).any(-1))).all()  # each coarse cell is all or nothing
    # SimMIM ImageNet numbers: 192 px, mask patch 32, Swin patch 4 -> 36 cells, ceil(21.6) = 22 masked
    m = upsampled_random_mask((48, 48), 8, 0.6, rng=np.random.default_rng(0))
    assert m.sum() == 22 * 64
    # SatVision-TOA numbers: 128 px, mask patch 8, patch 4 -> 256 cells, ceil(153.6) = 154 masked
    assert upsampled_random_mask((32, 32), 2, 0.6).sum() == 154 * 4
    cfg = SatVisionConfig()
    assert (cfg.image_size, cfg.num_channels, cfg.mask_patch_size, cfg.mask_ratio) == (128, 14, 8, 0.6)
    assert cfg.backbone_config.model_type == "swinv2" and cfg.backbone_config.embed_dim == 512


@pytest.mark.parametrize("backbone", ["swinv2", "vit"])
def test_fourteen_band_end_to_end_and_training(backbone):
    model = make_model(backbone)
    model.train()
    coarse = torch.randn(4, BANDS, 4, 4, generator=torch.Generator().manual_seed(3))
    x = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear")  # smooth, learnable chips
    mask = model.generate_mask(4, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(30):
        out = model(x, bool_masked_pos=mask)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert out.logits.shape == (4, BANDS, 32, 32)
    assert min(losses[-5:]) < 0.88 * losses[0], losses
    assert model.encoder.embeddings.mask_token.grad is not None  # the mask token is learned
    assert model.decoder[0].out_channels == model.config.encoder_stride**2 * BANDS
    assert model.get_image_features(x).shape[0] == 4


@pytest.mark.parametrize("backbone", ["swinv2", "vit"])
def test_loss_only_on_masked_pixels(backbone):
    model = make_model(backbone)
    model.eval()
    x = chips()
    mask = model.generate_mask(2, generator=torch.Generator().manual_seed(1))
    pix = patch_mask_to_pixels(mask, model.config.patch_grid(), model.config.model_patch_size).bool()
    pix = pix.expand(-1, BANDS, -1, -1)
    x = x.clone().requires_grad_(True)
    out = model(x, bool_masked_pos=mask)
    rec = out.logits.detach()
    # hand-computed loss
    expected = (rec - x.detach()).abs()[pix].sum() / (pix[:, :1].sum() + 1e-5) / BANDS
    assert torch.allclose(out.loss, expected, atol=1e-5)
    # the prediction does not see masked pixels (mask token): changing them only changes the target
    x2 = torch.where(pix, x.detach() + 5.0, x.detach())
    out2 = model(x2, bool_masked_pos=mask)
    assert torch.allclose(out2.logits, rec, atol=1e-5)
    assert not torch.allclose(out2.loss, out.loss)
    # changing visible pixels of the target (with the prediction held fixed) leaves the loss unchanged
    from hf_ssl.modeling.satvision.modeling_satvision import simmim_l1_loss

    pm = patch_mask_to_pixels(mask, model.config.patch_grid(), model.config.model_patch_size)
    x3 = torch.where(pix, x.detach(), x.detach() - 3.0)
    assert torch.allclose(simmim_l1_loss(x3, rec, pm), simmim_l1_loss(x.detach(), rec, pm), atol=1e-6)


def test_per_band_normalization_exact():
    mean = [float(i) for i in range(BANDS)]
    std = [0.5 + 0.25 * i for i in range(BANDS)]
    config = make_config(image_mean=mean, image_std=std)
    proc = SatVisionImageProcessor.from_ssl_config(config)
    assert proc.do_rescale is False
    values = np.arange(BANDS, dtype=np.float32)[:, None, None] * 2.0 + 1.0
    chw = np.broadcast_to(values, (BANDS, 40, 48)).copy()
    hwc = chw.transpose(1, 2, 0).copy()
    expected = (values - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    for arr in (chw, hwc, torch.from_numpy(chw)):
        pv = proc(arr, return_tensors="pt")["pixel_values"]
        assert pv.shape == (1, BANDS, 32, 32)
        assert torch.allclose(pv[0], torch.from_numpy(expected).float().expand(-1, 32, 32), atol=1e-5)
    # no resize / crop: exact arithmetic per band on a random array
    rnd = np.random.default_rng(0).random((BANDS, 32, 32)).astype(np.float32)
    pv = proc([rnd, rnd], do_resize=False, do_center_crop=False)["pixel_values"]
    ref = (rnd - np.array(mean, dtype=np.float32)[:, None, None]) / np.array(std, dtype=np.float32)[:, None, None]
    assert pv.shape == (2, BANDS, 32, 32) and np.allclose(pv[1].numpy(), ref, atol=1e-6)
    with pytest.raises(ValueError, match="14 channels"):
        proc(np.zeros((5, 32, 32), dtype=np.float32))
    # 3-band PIL images still work through the standard path
    from PIL import Image

    rgb = SatVisionImageProcessor.from_ssl_config(make_config(num_channels=3))
    img = Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype("uint8"))
    assert rgb(images=img, return_tensors="pt")["pixel_values"].shape == (1, 3, 32, 32)


def test_multiband_view_policy_on_arrays():
    from hf_ssl.training.data import SSLDataCollator, build_view_generator

    mean = [0.1 * i for i in range(BANDS)]
    config = make_config(image_mean=mean, image_std=[2.0] * BANDS,
                         augmentation={"horizontal_flip": 0.5, "crop_scale": [0.5, 1.0]})
    policy = build_view_generator(config)
    rng = np.random.default_rng(0)
    arr_hwc = rng.random((48, 40, BANDS)).astype(np.float32)
    batch = SSLDataCollator()([policy(arr_hwc if i % 2 else arr_hwc.transpose(2, 0, 1), rng) for i in range(4)])
    assert batch["pixel_values"].shape == (4, BANDS, 32, 32)
    assert batch["bool_masked_pos"].shape == (4, 256) and (batch["bool_masked_pos"].sum(1) == 10 * 16).all()
    # constant bands: crop/flip/resize keep the value, normalization is per band
    const = np.broadcast_to(np.arange(BANDS, dtype=np.float32), (48, 40, BANDS)).copy()
    pv = policy(const, rng)["pixel_values"]
    expected = (torch.arange(BANDS).float() - torch.tensor(mean)) / 2.0
    assert torch.allclose(pv.mean(dim=(1, 2)), expected, atol=1e-5)
    # the crop box lies inside the array and flips mirror the crop
    x, box, _ = policy.crop(arr_hwc.transpose(2, 0, 1).copy(), np.random.default_rng(1))
    left, top, w, h = box
    assert left >= 0 and top >= 0 and left + w <= 40 and top + h <= 48
    model = make_model()
    out = model(**{k: v for k, v in batch.items() if k != "num_skipped"})
    assert torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="channels"):
        policy(np.zeros((32, 32, 3), dtype=np.float32), rng)


def test_channel_mismatch_raises_clearly():
    model = make_model()
    with pytest.raises(ValueError, match="3 channels but the encoder expects 14"):
        model(chips(bands=3))
    with pytest.raises(ValueError, match="image_mean/image_std"):
        make_config(image_mean=[0.0] * 3, image_std=[1.0] * 3)
    with pytest.raises(ValueError, match="num_channels"):
        SatVisionConfig(backbone_config=dict(TINY_SWIN, num_channels=3), image_size=32, num_channels=14,
                        mask_patch_size=8)
    with pytest.raises(ValueError, match="bool_masked_pos"):
        model(chips(), bool_masked_pos=torch.zeros(2, 64, dtype=torch.bool))


@pytest.mark.parametrize("kwargs, match", [
    (dict(mask_ratio=1.0), "mask_ratio"),
    (dict(mask_ratio=0.0), "mask_ratio"),
    (dict(mask_patch_size=3), "multiple"),
    (dict(mask_patch_size=12), "divisible"),
    (dict(mask_patch_size=0), "mask_patch_size"),
])
def test_nonsense_configs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_config(**kwargs)


def test_convnet_rejected():
    with pytest.raises(ValueError, match="SwinV2 or ViT"):
        SatVisionConfig(backbone_config="resnet-18", image_size=32, num_channels=3)


@pytest.mark.parametrize("backbone", ["swinv2", "vit"])
def test_save_load_and_export_reload_in_subprocess(tmp_path, backbone):
    from transformers import AutoModel

    model = make_model(backbone)
    model.eval()
    model.save_pretrained(tmp_path / "ckpt")
    loaded = AutoModel.from_pretrained(tmp_path / "ckpt")
    assert isinstance(loaded, SatVisionForSelfSupervisedPretraining)
    mask = model.generate_mask(2)
    a, b = model(chips(), bool_masked_pos=mask), loaded.eval()(chips(), bool_masked_pos=mask)
    assert torch.allclose(a.loss, b.loss) and torch.allclose(a.logits, b.logits)
    export_dir = tmp_path / "exported"
    model.export_encoder(export_dir)
    x = chips(3)
    torch.save(x, tmp_path / "x.pt")
    expected = model.get_image_features(x)
    script = textwrap.dedent(f"""
        import sys
        sys.modules["hf_ssl"] = None
        import torch
        from transformers import AutoModel
        m = AutoModel.from_pretrained({str(export_dir)!r}).eval()
        assert m.config.num_channels == {BANDS}
        x = torch.load({str(tmp_path / 'x.pt')!r})
        with torch.no_grad():
            out = m(pixel_values=x)
        feats = out.pooler_output if {backbone!r} == "swinv2" else out.last_hidden_state[:, 1:].mean(1)
        torch.save(feats, {str(tmp_path / 'feats.pt')!r})
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert torch.allclose(torch.load(tmp_path / "feats.pt"), expected, atol=1e-5)
    assert METHOD.name == "satvision" and "cpu-demo" in METHOD.presets
