"""CropMAE invariants on a tiny ViT (CPU, 32 px, 8 px patches -> 16 patches)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

import hf_ssl  # noqa: F401
from hf_ssl.modeling.backbones import _vit_layers, patchify
from hf_ssl.modeling.cropmae import METHOD, CropMAEConfig, CropMAEForSelfSupervisedPretraining
from hf_ssl.modeling.losses import normalized_pixel_targets
from hf_ssl.modeling.masking import random_mask_torch

TINY_VIT = dict(model_type="vit", hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                patch_size=8)
N = 16


def make_config(**kwargs):
    for k, v in dict(mask_ratio=0.75, decoder_hidden_size=32, decoder_depth=1, decoder_num_heads=2,
                     decoder_mlp_dim=64, decoder_dropout=0.0).items():
        kwargs.setdefault(k, v)
    return CropMAEConfig(backbone_config=dict(TINY_VIT), image_size=32, **kwargs)


def make_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return CropMAEForSelfSupervisedPretraining(make_config(**kwargs))


def views(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 32, 32, generator=g), torch.randn(batch, 3, 32, 32, generator=g)]


def fixed_mask(batch=2, masked=12, seed=0):
    return random_mask_torch(batch, N, masked / N, generator=torch.Generator().manual_seed(seed))


def test_second_crop_lies_inside_first():
    from hf_ssl.training.data import build_view_generator

    policy = build_view_generator(CropMAEConfig())  # official scales at 224 px
    img = Image.fromarray((np.random.default_rng(0).random((300, 400, 3)) * 255).astype("uint8"))
    rng = np.random.default_rng(0)
    for _ in range(50):
        first, second, b1, b2 = policy.views(img, rng)
        l1, t1, w1, h1 = b1
        l2, t2, w2, h2 = b2
        assert l1 <= l2 + 1e-6 and t1 <= t2 + 1e-6 and l2 + w2 <= l1 + w1 + 1e-6 and t2 + h2 <= t1 + h1 + 1e-6
        area = (w2 * h2) / (w1 * h1)
        assert 0.3 - 0.02 <= area <= 0.6 + 0.02  # local crop: (0.3, 0.6) of the first crop's area
        assert first.size == second.size == (224, 224)
    out = policy(img, rng)
    assert [v.shape for v in out["pixel_values"]] == [(3, 224, 224)] * 2
    assert out["bool_masked_pos"].sum() == 196 - 2  # 98.5%: int(196 * 0.015) = 2 visible patches
    # with the policy's own crop geometry the second view's content is a zoom into the first view
    policy_tiny = build_view_generator(make_config(augmentation={"horizontal_flip": 0.0}))
    grad = np.tile(np.linspace(0, 255, 400, dtype=np.float32), (300, 1))
    ramp = Image.fromarray(np.stack([grad] * 3, -1).astype("uint8"))
    first, second, b1, b2 = policy_tiny.views(ramp, np.random.default_rng(3))
    f, s = np.asarray(first, dtype=np.float32)[..., 0], np.asarray(second, dtype=np.float32)[..., 0]
    assert f.min() - 2 <= s.min() and s.max() <= f.max() + 2


@pytest.mark.parametrize("ratio, visible", [(0.985, 1), (0.75, 4), (0.8, 3)])  # 16 patches; >= 1 visible
def test_mask_ratio_exact(ratio, visible):
    cfg = make_config(mask_ratio=ratio)
    assert cfg.num_visible(196) == int(196 * (1 - ratio))
    model = CropMAEForSelfSupervisedPretraining(cfg)
    mask = model.generate_mask(20, N)
    assert (mask.sum(1) == N - visible).all()
    assert CropMAEConfig().mask_ratio == 0.985
    out = model(views(), bool_masked_pos=None)
    assert out.metrics["mask_fraction"].item() == (N - visible) / N


def test_loss_only_on_masked_patches_and_hand_computed():
    model = make_model()
    model.eval()
    v1, v2 = views()
    mask = fixed_mask()
    out = model([v1, v2], bool_masked_pos=mask)
    target = normalized_pixel_targets(patchify(v2, 8))
    per_patch = ((out.logits - target) ** 2).mean(-1)
    assert torch.allclose(out.loss, per_patch[mask].mean(), atol=1e-6)
    # the loss gradient w.r.t. the predictions is zero on visible patches
    logits = out.logits.detach().requires_grad_(True)
    loss = (((logits - target) ** 2).mean(-1) * mask.float()).sum() / mask.sum()
    loss.backward()
    g = logits.grad.abs().sum(-1)
    assert (g[~mask] == 0).all() and (g[mask] > 0).all()


def test_masked_tokens_never_enter_the_encoder():
    model = make_model()
    mask = fixed_mask(masked=12)
    seen = []
    hook = _vit_layers(model.encoder)[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[1]))
    v1, v2 = views()
    model([v1, v2], bool_masked_pos=mask)
    hook.remove()
    assert sorted(seen) == [1 + 4, 1 + N]  # second view: CLS + 4 visible; first view: CLS + all 16
    # changing masked pixels of view 2 does not change the predictions
    pix = mask.view(2, 1, 4, 1, 4, 1).expand(2, 3, 4, 8, 4, 8).reshape(2, 3, 32, 32)
    model.eval()
    a = model([v1, v2], bool_masked_pos=mask).logits
    b = model([v1, torch.where(pix, v2 + 3.0, v2)], bool_masked_pos=mask).logits
    assert torch.allclose(a, b, atol=1e-6)


def test_decoder_uses_first_view():
    model = make_model()
    model.eval()
    v1, v2 = views()
    mask = fixed_mask()
    a = model([v1, v2], bool_masked_pos=mask).logits
    b = model([v1 + torch.randn_like(v1), v2], bool_masked_pos=mask).logits
    assert not torch.allclose(a, b, atol=1e-4)
    # the gradient reaches the encoder through the first view as well
    v1g = v1.clone().requires_grad_(True)
    model([v1g, v2], bool_masked_pos=mask).loss.backward()
    assert v1g.grad.abs().sum() > 0
    assert model.decoder_blocks[0].cross_attn.kv.weight.grad.abs().sum() > 0


def test_few_steps_reduce_loss_and_collated_batch():
    from hf_ssl.training.data import SSLDataCollator, build_view_generator

    model = make_model()
    model.train()
    policy = build_view_generator(model.config)
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray((np.random.default_rng(i).random((40, 40, 3)) * 255).astype("uint8")) for i in range(4)]
    batch = SSLDataCollator()([policy(im, rng) for im in imgs])
    batch.pop("num_skipped")
    assert isinstance(batch["pixel_values"], list) and batch["pixel_values"][0].shape == (4, 3, 32, 32)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        out = model(**batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.9 * losses[0], losses
    assert out.embeddings.shape == (4, 32) and not out.embeddings.requires_grad
    stacked = torch.stack(batch["pixel_values"], dim=1)  # [B, 2, C, H, W] is accepted too
    assert torch.isfinite(model(stacked, bool_masked_pos=batch["bool_masked_pos"]).loss)


def test_save_load_and_export(tmp_path):
    from transformers import AutoModel

    model = make_model()
    model.eval()
    model.save_pretrained(tmp_path / "ckpt")
    loaded = AutoModel.from_pretrained(tmp_path / "ckpt").eval()
    assert isinstance(loaded, CropMAEForSelfSupervisedPretraining)
    mask = fixed_mask()
    a, b = model(views(), bool_masked_pos=mask), loaded(views(), bool_masked_pos=mask)
    assert torch.allclose(a.loss, b.loss) and torch.allclose(a.logits, b.logits)
    export_dir = tmp_path / "exported"
    model.export_encoder(export_dir)
    x = views(3)[0]
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
            torch.save(m(pixel_values=x).last_hidden_state[:, 0], {str(tmp_path / 'feats.pt')!r})
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert torch.allclose(torch.load(tmp_path / "feats.pt"), expected, atol=1e-5)
    d = CropMAEConfig()
    assert (d.decoder_hidden_size, d.decoder_depth, d.decoder_num_heads, d.norm_pix_loss) == (256, 4, 8, True)
    assert d.augmentation["global_scale"] == [0.1, 1.0] and d.augmentation["local_scale"] == [0.3, 0.6]
    assert METHOD.name == "cropmae" and "cpu-demo" in METHOD.presets


@pytest.mark.parametrize("kwargs, match", [
    (dict(mask_ratio=1.0), "mask_ratio"),
    (dict(mask_ratio=0.0), "mask_ratio"),
    (dict(decoder_depth=0), "decoder_depth"),
    (dict(decoder_num_heads=3), "divisible"),
    (dict(decoder_dropout=1.0), "decoder_dropout"),
    (dict(augmentation={"local_scale": [0.6, 0.3]}), "local_scale"),
])
def test_nonsense_configs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_config(**kwargs)


def test_bad_inputs_raise():
    model = make_model()
    with pytest.raises(ValueError, match="first_crop, second_crop"):
        model(views()[0])
    with pytest.raises(ValueError, match="channels"):
        model([torch.randn(2, 1, 32, 32)] * 2)
    with pytest.raises(ValueError, match="at least one"):
        model(views(), bool_masked_pos=torch.ones(2, N, dtype=torch.bool))
    with pytest.raises(ValueError, match="ViT"):
        CropMAEConfig(backbone_config="resnet-18", image_size=32)


def test_encoder_positions_are_fixed_sincos_frozen_and_survive_reload(tmp_path):
    from hf_ssl.modeling.backbones import sincos_pos_embed_2d

    model = make_model().train()
    pos = model.encoder.embeddings.position_embeddings
    torch.testing.assert_close(pos[0], sincos_pos_embed_2d(32, 4, 4, cls_token=True).to(pos.dtype))
    assert not pos.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("encoder.embeddings.position"))
    model.save_pretrained(tmp_path)
    reloaded = CropMAEForSelfSupervisedPretraining.from_pretrained(tmp_path).train()
    assert not reloaded.encoder.embeddings.position_embeddings.requires_grad
    torch.testing.assert_close(reloaded.encoder.embeddings.position_embeddings, pos)
    learned = make_model(encoder_sincos_pos_embed=False).train()
    assert learned.encoder.embeddings.position_embeddings.requires_grad
