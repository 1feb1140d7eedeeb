"""CAE (Context Autoencoder) invariants on a tiny ViT (CPU, 32 px images, 8 px patches -> 16 patches)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import hf_ssl  # noqa: F401  (registers the Auto classes)
from hf_ssl.modeling.backbones import _vit_layers, encode, patchify
from hf_ssl.modeling.cae import METHOD, CAEConfig, CAEForSelfSupervisedPretraining, CAEImageProcessor
from hf_ssl.modeling.masking import block_mask_torch, mask_to_index, random_mask_torch

TINY_VIT = dict(model_type="vit", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                patch_size=8)
PATCH = 8
N = 16  # (32 / 8) ** 2


def make_config(**kwargs):
    kwargs.setdefault("regressor_depth", 1)
    kwargs.setdefault("decoder_depth", 1)
    return CAEConfig(backbone_config=dict(TINY_VIT), image_size=32, **kwargs)


def make_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return CAEForSelfSupervisedPretraining(make_config(**kwargs))


def images(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 32, 32, generator=g)


def fixed_mask(batch=2, num_masked=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return random_mask_torch(batch, N, num_masked / N, generator=g)


def patch_pixel_mask(mask):
    """[B, N] patch mask -> [B, 3, 32, 32] bool pixel mask."""
    b = mask.shape[0]
    m = mask.view(b, 1, 4, 1, 4, 1).expand(b, 3, 4, PATCH, 4, PATCH)
    return m.reshape(b, 3, 32, 32)


# ----------------------------------------------------------------------------------------------------
# 1. masks
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ratio", [0.25, 0.4, 0.5, 0.75])
def test_generated_masks_have_exact_count(ratio):
    model = make_model(mask_ratio=ratio)
    for grid in [(4, 4), (14, 14)]:
        mask = model.generate_mask(6, grid)
        assert mask.dtype == torch.bool and mask.shape == (6, grid[0] * grid[1])
        assert (mask.sum(1) == round(grid[0] * grid[1] * ratio)).all()


def _masked_neighbour_pairs(mask, grid):
    m = mask.view(-1, *grid)
    horizontal = (m[:, :, 1:] & m[:, :, :-1]).sum(dim=(1, 2))
    vertical = (m[:, 1:, :] & m[:, :-1, :]).sum(dim=(1, 2))
    return (horizontal + vertical).float().mean().item()


def test_block_masks_are_spatially_clustered():
    model = make_model(mask_ratio=0.5)  # default: block-wise, >= 16 patches per block
    grid = (14, 14)
    block, rand = [], []
    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        mb = model.generate_mask(8, grid, generator=g)
        mr = random_mask_torch(8, 196, 0.5, generator=g)
        assert (mb.sum(1) == 98).all() and (mr.sum(1) == 98).all()
        block.append(_masked_neighbour_pairs(mb, grid))
        rand.append(_masked_neighbour_pairs(mr, grid))
    block_mean, rand_mean = sum(block) / len(block), sum(rand) / len(rand)
    # a random 98-of-196 mask has ~90 masked 4-neighbour pairs; block masks have far more
    assert block_mean > 1.4 * rand_mean, (block_mean, rand_mean)
    # the shared generator the data pipeline uses agrees
    assert _masked_neighbour_pairs(block_mask_torch(16, grid, 0.5), grid) > 1.4 * rand_mean


def test_forward_without_mask_uses_generated_mask():
    model = make_model(mask_ratio=0.25)
    seen = []
    hook = _vit_layers(model.encoder)[0].register_forward_pre_hook(
        lambda mod, args: seen.append((args[0].shape[1], torch.is_grad_enabled())))
    out = model(images(3))
    hook.remove()
    assert out.logits.shape == (3, 4, PATCH * PATCH * 3)
    assert (1 + 12, True) in seen


# ----------------------------------------------------------------------------------------------------
# 2. reconstruction loss only on masked patches
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["pixel_norm", "pixel"])
def test_reconstruction_loss_depends_only_on_masked_targets(target):
    model = make_model(target=target)
    x, mask = images(), fixed_mask()
    _, masked_index = mask_to_index(mask)
    with torch.no_grad():
        preds = model(x, bool_masked_pos=mask).logits
    targets = model._reconstruction_targets(x, None, (4, 4)).clone().requires_grad_(True)
    recon, _ = model._loss_terms(preds, targets, masked_index, None, None)
    recon.backward()
    grad_norm_per_patch = targets.grad.abs().sum(-1)  # [B, N]
    assert (grad_norm_per_patch[~mask] == 0).all()
    assert (grad_norm_per_patch[mask] > 0).all()


def test_pixel_targets_are_normalized_per_patch():
    model = make_model(target="pixel_norm")
    t = model._reconstruction_targets(images(), None, (4, 4))
    assert t.shape == (2, N, PATCH * PATCH * 3)
    assert torch.allclose(t.mean(-1), torch.zeros(2, N), atol=1e-5)
    assert torch.allclose(t.var(-1), torch.ones(2, N), atol=1e-3)
    raw = make_model(target="pixel")._reconstruction_targets(images(), None, (4, 4))
    assert torch.equal(raw, patchify(images(), PATCH))


def test_token_targets_only_masked_positions_matter():
    model = make_model(target="tokens", vocab_size=10)
    model.eval()
    x, mask = images(), fixed_mask()
    tokens = torch.randint(0, 10, (2, N), generator=torch.Generator().manual_seed(1))
    out = model(x, bool_masked_pos=mask, visual_tokens=tokens)
    assert out.logits.shape == (2, 8, 10)
    changed_visible = tokens.clone()
    changed_visible[~mask] = (changed_visible[~mask] + 1) % 10
    changed_masked = tokens.clone()
    changed_masked[mask] = (changed_masked[mask] + 1) % 10
    rl = lambda t: model(x, bool_masked_pos=mask, visual_tokens=t).metrics["reconstruction_loss"]  # noqa: E731
    assert torch.equal(rl(changed_visible), out.metrics["reconstruction_loss"])
    assert not torch.equal(rl(changed_masked), out.metrics["reconstruction_loss"])
    # a registered tokenizer callable is used when the batch has no visual_tokens
    model.set_tokenizer(lambda pv: tokens)
    assert torch.equal(model(x, bool_masked_pos=mask).loss, out.loss)
    model.set_tokenizer(None)
    with pytest.raises(ValueError, match="visual_tokens"):
        model(x, bool_masked_pos=mask)


# ----------------------------------------------------------------------------------------------------
# 3. masked patches never enter the encoder's gradient path
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("teacher_momentum", [0.0, 0.99])
def test_encoder_sees_only_visible_tokens(teacher_momentum):
    model = make_model(teacher_momentum=teacher_momentum)
    mask = fixed_mask(num_masked=4)  # M=4, K=12: sequence lengths are distinguishable
    seen = []
    hooks = [_vit_layers(model.encoder)[0].register_forward_pre_hook(
        lambda mod, args: seen.append(("encoder", args[0].shape[1], torch.is_grad_enabled())))]
    if model.teacher_encoder is not None:
        hooks.append(_vit_layers(model.teacher_encoder)[0].register_forward_pre_hook(
            lambda mod, args: seen.append(("teacher", args[0].shape[1], torch.is_grad_enabled()))))
    model(images(), bool_masked_pos=mask)
    for h in hooks:
        h.remove()
    # the gradient-path encoder call sees CLS + 12 visible tokens; only the stop-grad alignment branch sees the
    # 4 masked patches (on their own); nothing ever sees all 16 patches
    grad_calls = [s for s in seen if s[2]]
    assert grad_calls == [("encoder", 13, True)]
    target_owner = "teacher" if teacher_momentum else "encoder"
    assert (target_owner, 5, False) in seen
    assert all(length != 1 + N for _, length, _ in seen)


def test_predictions_ignore_masked_pixels():
    model = make_model()
    model.eval()
    x, mask = images(), fixed_mask()
    pix = patch_pixel_mask(mask)
    out = model(x, bool_masked_pos=mask)
    x_masked_changed = torch.where(pix, torch.randn_like(x) * 3, x)
    out_m = model(x_masked_changed, bool_masked_pos=mask)
    # predictions come only from visible patches ...
    assert torch.allclose(out.logits, out_m.logits, atol=1e-6)
    assert torch.allclose(out.embeddings, out_m.embeddings, atol=1e-6)
    # ... while the targets (pixels and latents of the masked patches) do change
    assert not torch.allclose(out.metrics["reconstruction_loss"], out_m.metrics["reconstruction_loss"])
    assert not torch.allclose(out.metrics["alignment_loss"], out_m.metrics["alignment_loss"])
    x_visible_changed = torch.where(~pix, x + 1.0, x)
    assert not torch.allclose(out.logits, model(x_visible_changed, bool_masked_pos=mask).logits)


# ----------------------------------------------------------------------------------------------------
# 4. stop-gradient on the alignment target
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("decoder_hidden_size", [None, 16])
def test_alignment_target_is_stop_gradient(decoder_hidden_size):
    model = make_model(decoder_hidden_size=decoder_hidden_size)
    captured = {}
    original = model._alignment_targets

    def spy(*args, **kwargs):
        captured["target"] = original(*args, **kwargs)
        return captured["target"]

    model._alignment_targets = spy
    x, mask = images().requires_grad_(True), fixed_mask()
    out = model(x, bool_masked_pos=mask)
    assert not captured["target"].requires_grad and captured["target"].grad_fn is None
    out.loss.backward()
    pix = patch_pixel_mask(mask)
    # masked pixels reach the loss only through the (stop-grad) targets: their gradient is exactly zero
    assert (x.grad[pix] == 0).all()
    assert x.grad[~pix].abs().sum() > 0


def test_alignment_weight_changes_only_regressor_side_gradients():
    x, mask = images(), fixed_mask()
    grads = {}
    for weight in (0.0, 2.0):
        model = make_model(seed=0, alignment_weight=weight)
        model(x, bool_masked_pos=mask).loss.backward()
        grads[weight] = {n: (p.grad.clone() if p.grad is not None else None) for n, p in model.named_parameters()}
    g0, g2 = grads[0.0], grads[2.0]
    for name in g0:
        if name.startswith("decoder."):  # decoder sits after the regressed latents: the alignment loss never reaches it
            assert torch.allclose(g0[name], g2[name], atol=1e-7), name
    assert not torch.allclose(g0["regressor.norm.weight"], g2["regressor.norm.weight"])
    assert not torch.allclose(g0["mask_token"], g2["mask_token"])
    enc = "encoder.layers.1.mlp.fc2.weight"
    assert not torch.allclose(g0[enc], g2[enc])


def test_ema_teacher_gets_no_gradient_and_follows_student():
    model = make_model(teacher_momentum=0.9)
    assert model.teacher_encoder is not None
    assert not any(p.requires_grad for p in model.teacher_encoder.parameters())
    before = [p.clone() for p in model.teacher_encoder.parameters()]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(images(), bool_masked_pos=fixed_mask()).loss.backward()
    assert all(p.grad is None for p in model.teacher_encoder.parameters())
    opt.step()
    model.on_step_end(1, 10)
    for t, old, s in zip(model.teacher_encoder.parameters(), before, model.encoder.parameters()):
        assert torch.allclose(t, 0.9 * old + 0.1 * s.detach(), atol=1e-6)
    # default (official) model has no teacher; on_step_end is a no-op
    plain = make_model()
    assert plain.teacher_encoder is None
    plain.on_step_end(1, 10)


# ----------------------------------------------------------------------------------------------------
# 5. save / load / export
# ----------------------------------------------------------------------------------------------------
def test_config_round_trip(tmp_path):
    from transformers import AutoConfig

    cfg = make_config(mask_ratio=0.4, alignment_weight=1.5, target="pixel", teacher_momentum=0.99,
                      decoder_hidden_size=16, decoder_num_heads=4)
    assert cfg.augmentation["mask_ratio"] == 0.4 and cfg.augmentation["policy"] == "masked"
    cfg.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, CAEConfig)
    for key in ("mask_ratio", "alignment_weight", "target", "teacher_momentum", "decoder_hidden_size",
                "decoder_num_heads", "regressor_depth", "decoder_depth", "decoder_layer_scale", "feature_pooling",
                "augmentation", "encoder_sincos_pos_embed"):
        assert getattr(loaded, key) == getattr(cfg, key), key
    assert loaded.backbone_config.to_dict() == cfg.backbone_config.to_dict()
    assert CAEConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
    # paper defaults
    d = CAEConfig()
    assert (d.mask_ratio, d.regressor_depth, d.decoder_depth, d.alignment_weight, d.decoder_layer_scale) == (
        0.5, 4, 4, 2.0, 0.1)
    assert d.backbone_config.hidden_size == 768 and d.backbone_config.patch_size == 16
    assert d.augmentation["crop_scale"] == [0.08, 1.0] and d.augmentation["min_block_patches"] == 16
    assert METHOD.name == "cae" and METHOD.model_type == "hf_ssl_cae"


@pytest.mark.parametrize("teacher_momentum", [0.0, 0.99])
def test_save_load_equality(tmp_path, teacher_momentum):
    from transformers import AutoImageProcessor, AutoModel, AutoModelForPreTraining

    model = make_model(teacher_momentum=teacher_momentum)
    model.eval()
    model.save_pretrained(tmp_path)
    CAEImageProcessor.from_ssl_config(model.config).save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, CAEForSelfSupervisedPretraining)
    assert isinstance(AutoModelForPreTraining.from_pretrained(tmp_path), CAEForSelfSupervisedPretraining)
    sd, lsd = model.state_dict(), loaded.state_dict()
    assert sd.keys() == lsd.keys()
    for k in sd:
        assert torch.equal(sd[k], lsd[k]), k
    assert not loaded.encoder.embeddings.position_embeddings.requires_grad
    if loaded.teacher_encoder is not None:
        assert not any(p.requires_grad for p in loaded.teacher_encoder.parameters())
    loaded.eval()
    x, mask = images(), fixed_mask()
    a, b = model(x, bool_masked_pos=mask), loaded(x, bool_masked_pos=mask)
    assert torch.allclose(a.loss, b.loss) and torch.allclose(a.logits, b.logits)
    proc = AutoImageProcessor.from_pretrained(tmp_path)
    assert isinstance(proc, CAEImageProcessor)
    import numpy as np
    from PIL import Image

    img = Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype("uint8"))
    pv = proc(images=img, return_tensors="pt")["pixel_values"]
    assert pv.shape == (1, 3, 32, 32)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_export_encoder_loads_without_hf_ssl(tmp_path, pooling):
    model = make_model(feature_pooling=pooling)
    model.eval()
    export_dir = tmp_path / "exported"
    model.export_encoder(export_dir)
    x = images(3)
    torch.save(x, tmp_path / "x.pt")
    expected = model.get_image_features(x)
    assert torch.allclose(expected, encode(model.encoder, x, pooling), atol=1e-6)
    script = textwrap.dedent(f"""
        import sys
        sys.modules["hf_ssl"] = None  # any import of hf_ssl would fail
        import torch
        from transformers import AutoModel
        m = AutoModel.from_pretrained({str(export_dir)!r}).eval()
        assert type(m).__name__ == "ViTModel", type(m)
        x = torch.load({str(tmp_path / 'x.pt')!r})
        with torch.no_grad():
            h = m(pixel_values=x).last_hidden_state
        feats = h[:, 0] if {pooling!r} == "cls" else h[:, 1:].mean(1)
        torch.save(feats, {str(tmp_path / 'feats.pt')!r})
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    feats = torch.load(tmp_path / "feats.pt")
    assert torch.allclose(feats, expected, atol=1e-5)
    meta = json.loads((export_dir / "hf_ssl_export.json").read_text())
    assert meta["feature_pooling"] == pooling


# ----------------------------------------------------------------------------------------------------
# 6. nonsense inputs
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(mask_ratio=1.0), "mask_ratio"),
    (dict(mask_ratio=0.0), "mask_ratio"),
    (dict(mask_ratio=-0.2), "mask_ratio"),
    (dict(alignment_weight=-1.0), "alignment_weight"),
    (dict(regressor_depth=0), "regressor_depth"),
    (dict(decoder_depth=0), "decoder_depth"),
    (dict(decoder_layer_scale=-0.1), "decoder_layer_scale"),
    (dict(target="dalle"), "target"),
    (dict(teacher_momentum=1.0), "teacher_momentum"),
    (dict(decoder_num_heads=3), "divisible"),
    (dict(feature_pooling="max"), "feature_pooling"),
])
def test_nonsense_configs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_config(**kwargs)


def test_convnet_backbone_rejected():
    with pytest.raises(ValueError, match="ViT"):
        CAEConfig(backbone_config="resnet-18", image_size=32)
    with pytest.raises(ValueError, match="ViT"):
        CAEConfig(backbone_config=dict(model_type="resnet", depths=[1, 1], hidden_sizes=[8, 16]), image_size=32)


def test_bad_inputs_raise_clearly():
    model = make_model()
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="divisible"):
        model(torch.randn(2, 3, 30, 30))
    uneven = torch.zeros(2, N, dtype=torch.bool)
    uneven[0, :8] = True
    uneven[1, :7] = True
    with pytest.raises(ValueError, match="same number"):
        model(images(), bool_masked_pos=uneven)
    with pytest.raises(ValueError, match="shape"):
        model(images(), bool_masked_pos=torch.zeros(2, N + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least one"):
        model(images(), bool_masked_pos=torch.ones(2, N, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least one"):
        model(images(), bool_masked_pos=torch.zeros(2, N, dtype=torch.bool))
    # a [B, gh, gw] mask (2-D generator output) is accepted
    out = model(images(), bool_masked_pos=fixed_mask().view(2, 4, 4))
    assert out.logits.shape == (2, 8, PATCH * PATCH * 3)
    tok = make_model(target="tokens", vocab_size=10)
    with pytest.raises(ValueError, match="visual_tokens"):
        tok(images(), bool_masked_pos=fixed_mask(), visual_tokens=torch.full((2, N), 10))


# ----------------------------------------------------------------------------------------------------
# 7. it learns; reconstruct() for pictures
# ----------------------------------------------------------------------------------------------------
def test_few_steps_reduce_loss_and_outputs():
    model = make_model(seed=0)
    model.train()
    x, mask = images(4, seed=3), fixed_mask(4, seed=3)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    losses, recon = [], []
    for step in range(25):
        out = model(x, bool_masked_pos=mask)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        model.on_step_end(step + 1, 25)
        losses.append(out.loss.item())
        recon.append(out.metrics["reconstruction_loss"].item())
    assert losses[-1] < 0.7 * losses[0], losses
    assert recon[-1] < 0.9 * recon[0], recon  # not only the alignment term: the decoder learns the masked pixels
    assert set(out.metrics) == {"reconstruction_loss", "alignment_loss"}
    assert all(not v.requires_grad for v in out.metrics.values())
    assert torch.allclose(out.loss, out.metrics["reconstruction_loss"] + 2.0 * out.metrics["alignment_loss"])
    assert out.embeddings.shape == (4, 32) and not out.embeddings.requires_grad
    loss, emb, logits = model(x, bool_masked_pos=mask, return_dict=False)[:3]
    assert logits.shape == (4, 8, PATCH * PATCH * 3)


@pytest.mark.parametrize("target", ["pixel_norm", "pixel"])
def test_reconstruct(target):
    model = make_model(target=target)
    model.eval()
    x, mask = images(), fixed_mask()
    rec = model.reconstruct(x, mask)
    assert rec.shape == x.shape
    pix = patch_pixel_mask(mask)
    assert torch.equal(rec[~pix], x[~pix])
    assert not torch.allclose(rec[pix], x[pix])
    if target == "pixel":  # the masked patches are exactly the decoder's predictions
        _, masked_index = mask_to_index(mask)
        pred = model(x, bool_masked_pos=mask).logits
        got = torch.gather(patchify(rec, PATCH), 1, masked_index.unsqueeze(-1).expand(-1, -1, pred.shape[-1]))
        assert torch.allclose(got, pred, atol=1e-5)
    img = model.reconstruct(x, mask, unnormalize=True)
    assert img.min() >= 0 and img.max() <= 1
    assert model.reconstruct(x).shape == x.shape  # generated mask


def test_get_image_features_runs_full_image():
    model = make_model()
    model.eval()
    x = images()
    seen = []
    hook = _vit_layers(model.encoder)[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[1]))
    feats = model.get_image_features(x)
    hook.remove()
    assert seen == [1 + N] and feats.shape == (2, 32)
    copy.deepcopy(model)  # the model (with its plain tokenizer attribute) stays deep-copyable
