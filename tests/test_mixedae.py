"""MixedAE invariants on a tiny ViT (CPU, 32 px, 8 px patches -> 16 patches, mixing ratio 0.25 -> groups of 4)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hf_ssl  # noqa: F401
from hf_ssl.modeling.backbones import _vit_layers, patchify, vit_embed_patches
from hf_ssl.modeling.losses import normalized_pixel_targets
from hf_ssl.modeling.mixedae import METHOD, MixedAEConfig, MixedAEForSelfSupervisedPretraining, MixedAEImageProcessor
from hf_ssl.modeling.mixedae.modeling_mixedae import (homologous_contrastive_loss, homology_attention_mask,
                                                      random_mixing_assignment, sequence_sources, topk_attention_mask)
from hf_ssl.training.data import build_view_generator

TINY_VIT = dict(model_type="vit", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                patch_size=8)
N = 16


def make_config(**kwargs):
    for k, v in dict(decoder_hidden_size=32, decoder_depth=1, decoder_num_heads=2).items():
        kwargs.setdefault(k, v)
    return MixedAEConfig(backbone_config=dict(TINY_VIT), image_size=32, **kwargs)


def make_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return MixedAEForSelfSupervisedPretraining(make_config(**kwargs))


def images(batch=8, seed=0):
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def assignment(groups=2, seed=0, group_size=4):
    return random_mixing_assignment(groups, N, group_size, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------
# 1. mixing
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("group_size", [2, 4])
def test_mixing_assignment_exact(group_size):
    a = random_mixing_assignment(50, 64, group_size, generator=torch.Generator().manual_seed(1))
    assert a.shape == (50, 64) and a.dtype == torch.long
    assert int(a.min()) == 0 and int(a.max()) == group_size - 1  # every location from exactly one source
    counts = F.one_hot(a, group_size).sum(1)
    assert bool((counts == 64 // group_size).all())  # each source owns exactly r * N positions
    assert len({tuple(row.tolist()) for row in a}) == 50  # random per mixed image
    # positions are uniformly spread: every slot appears at every position over many draws
    many = random_mixing_assignment(2000, 64, group_size, generator=torch.Generator().manual_seed(2))
    freq = F.one_hot(many, group_size).float().mean(0)
    assert torch.allclose(freq, torch.full_like(freq, 1 / group_size), atol=0.05)


def test_mixed_tokens_come_from_the_assigned_source():
    model = make_model(segment_embedding=False).eval()
    x = images(8)
    a = assignment(2)
    tokens, _ = vit_embed_patches(model.encoder, x)
    mixed = model.mix_tokens(tokens, a)
    for g in range(2):
        for n in range(N):
            assert torch.equal(mixed[g, n], tokens[4 * g + int(a[g, n]), n])
    seg = make_model(segment_embedding=True).eval()
    tokens, _ = vit_embed_patches(seg.encoder, x)
    mixed = seg.mix_tokens(tokens, a)
    assert torch.allclose(mixed[1, 3], tokens[4 + int(a[1, 3]), 3] + seg.segment_embed.weight[int(a[1, 3])])


def test_invalid_assignment_and_config_rejected():
    model = make_model()
    bad = assignment(2)
    bad[0, :5] = 0  # unbalanced
    with pytest.raises(ValueError, match="exactly"):
        model(pixel_values=images(8), mixing_assignment=bad)
    with pytest.raises(ValueError, match="mixing_assignment"):
        model(pixel_values=images(8), mixing_assignment=assignment(1))
    with pytest.raises(ValueError, match="channels"):
        model(pixel_values=torch.randn(4, 1, 32, 32))
    for kwargs in (dict(mixing_ratio=0.3), dict(mixing_ratio=1.0), dict(mixing_ratio=0.0),
                   dict(homologous_attention="soft"), dict(homocon_temperature=-0.1), dict(homocon_weight=-1.0)):
        with pytest.raises(ValueError):
            make_config(**kwargs)
    with pytest.raises(ValueError, match="evenly"):
        make_config(mixing_ratio=1 / 32)  # 16 patches cannot be split among 32 images
    with pytest.raises(ValueError, match="ViT"):
        MixedAEConfig(backbone_config="resnet-tiny", image_size=32)


# ----------------------------------------------------------------------------------------------------
# 2. homologous attention
# ----------------------------------------------------------------------------------------------------
def test_homology_mask_blocks_cross_image_attention():
    model = make_model(homologous_attention="mask", segment_embedding=False).eval()
    a = assignment(1)
    _, cls = vit_embed_patches(model.encoder, images(1))
    hidden = torch.cat([cls.expand(1, 4, -1), torch.randn(1, N, 32)], dim=1)  # 4 per-source CLS, then patches
    base = model.encode_mixed(hidden, a)
    other = (a[0] != 0).nonzero().flatten() + 4  # sequence positions of the other sources' patches
    own = torch.cat([torch.tensor([0]), (a[0] == 0).nonzero().flatten() + 4])  # source 0: its CLS + patches
    perturbed = hidden.clone()
    perturbed[0, other] += 5 * torch.randn(len(other), 32)
    out = model.encode_mixed(perturbed, a)
    # source-0 tokens are unchanged through the whole (two-layer) encoder; the other sources' tokens and CLS change
    assert torch.allclose(out[0, own], base[0, own], atol=1e-5)
    assert not torch.allclose(out[0, other], base[0, other], atol=1e-3)
    assert not torch.allclose(out[0, 1:4], base[0, 1:4], atol=1e-3)
    # a single stock ViT layer given the additive mask behaves the same way
    layer = _vit_layers(model.encoder)[0]
    mask = homology_attention_mask(sequence_sources(a, 4))
    assert torch.allclose(layer(hidden, mask)[0, own], layer(perturbed, mask)[0, own], atol=1e-5)
    # without the restriction the same perturbation does leak into source 0
    plain = make_model(homologous_attention="none", segment_embedding=False).eval()
    assert not torch.allclose(plain.encode_mixed(perturbed, a)[0, own], plain.encode_mixed(hidden, a)[0, own],
                              atol=1e-3)


def test_homology_mask_layout():
    src = sequence_sources(torch.tensor([[0, 1, 0, 1]]), 2)
    assert src.tolist() == [[0, 1, 0, 1, 0, 1]]  # CLS 0, CLS 1, then the patches' sources
    allowed = homology_attention_mask(src)[0, 0] == 0
    expected = torch.tensor([[(i % 2) == (j % 2) for j in range(6)] for i in range(6)])
    assert torch.equal(allowed, expected)


def test_topk_attention_keeps_exactly_k_highest_keys():
    scores = torch.randn(2, 3, 4 + N, 4 + N, generator=torch.Generator().manual_seed(0))
    k = N // 4 + 1
    mask = topk_attention_mask(scores, k)
    kept = mask == 0
    assert bool((kept.sum(-1) == k).all())  # every query keeps exactly r * N + 1 keys
    thresh = scores.topk(k, dim=-1).values[..., -1:]
    assert torch.equal(kept, scores >= thresh)  # ... namely its k highest scores
    # the softmax over masked scores puts all mass on the kept keys
    p = (scores + mask).softmax(-1)
    assert torch.allclose(p.masked_fill(~kept, 0).sum(-1), torch.ones(2, 3, 4 + N))
    assert torch.equal(topk_attention_mask(scores, 100), torch.zeros_like(scores))  # k >= L: vanilla attention


def test_topk_mode_matches_explicit_masked_layers():
    model = make_model(homologous_attention="topk").eval()
    a = assignment(2)
    hidden = torch.randn(2, 4 + N, 32, generator=torch.Generator().manual_seed(3))
    out = model.encode_mixed(hidden, a)
    h = hidden
    for layer in _vit_layers(model.encoder):
        attn = layer.attention
        x = layer.layernorm_before(h)
        q = attn.q_proj(x).view(2, 4 + N, 2, -1).transpose(1, 2)
        k = attn.k_proj(x).view(2, 4 + N, 2, -1).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        h = layer(h, topk_attention_mask(scores, N // 4 + 1))
    assert torch.allclose(out, model.encoder.layernorm(h), atol=1e-5)
    assert not torch.allclose(out, make_model(homologous_attention="none").eval().encode_mixed(hidden, a), atol=1e-4)


# ----------------------------------------------------------------------------------------------------
# 3. losses
# ----------------------------------------------------------------------------------------------------
def test_homocon_matches_hand_computation():
    torch.manual_seed(0)
    feats = torch.randn(2, 6, 5)
    labels = torch.tensor([[0, 0, 1, 1, 2, 2], [0, 1, 0, 1, 1, 0]])
    t = 0.2
    total, count = 0.0, 0
    for g in range(2):
        z = [v / v.norm() for v in feats[g]]
        for i in range(6):
            denom = sum(math.exp(float(z[i] @ z[a]) / t) for a in range(6) if a != i)
            pos = [p for p in range(6) if p != i and labels[g, p] == labels[g, i]]
            total += -sum(float(z[i] @ z[p]) / t - math.log(denom) for p in pos) / len(pos)
            count += 1
    expected = total / count
    assert homologous_contrastive_loss(feats, labels, t).item() == pytest.approx(expected, rel=1e-5)
    # perfectly clustered features: each positive gets 1/|P(i)| of the mass, loss = mean log |P(i)|
    clustered = F.one_hot(labels, 3).float() * 10
    expected = (6 * math.log(1) + 6 * math.log(2)) / 12  # group 0: one positive each, group 1: two
    assert homologous_contrastive_loss(clustered, labels, 0.05).item() == pytest.approx(expected, abs=1e-3)


def test_reconstruction_loss_only_on_masked_patches_with_normalized_targets():
    model = make_model(homocon_weight=0.0).eval()
    x, a = images(8), assignment(2)
    out = model(pixel_values=x, mixing_assignment=a)
    slot = torch.arange(8) % 4
    own = a.repeat_interleave(4, 0) == slot[:, None]  # [B, N] positions each image contributed
    target = normalized_pixel_targets(patchify(x, 8))
    assert torch.allclose(target.mean(-1), torch.zeros(8, N), atol=1e-5)  # normalized per patch
    per_patch = ((out.logits - target) ** 2).mean(-1)
    expected = per_patch[~own].mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.metrics["mask_fraction"].item() == pytest.approx(0.75)
    # the visible (own) patches carry no loss: changing their predictions' targets does not move the loss
    x2 = x.clone()
    p = patchify(x2, 8)
    p[own] = torch.randn_like(p[own])
    x2 = p.reshape(8, 4, 4, 8, 8, 3).permute(0, 5, 1, 3, 2, 4).reshape(8, 3, 32, 32)
    assert torch.equal(patchify(x2, 8)[~own], patchify(x, 8)[~own])
    # with the oracle mask, an image's own positions drive its encoder tokens; the loss still only reads masked ones
    pred_only = ((out.logits - normalized_pixel_targets(patchify(x2, 8))) ** 2).mean(-1)[~own].mean()
    assert pred_only.item() == pytest.approx(expected.item(), rel=1e-5)
    # norm_pix_loss=False uses raw pixels
    raw = make_model(homocon_weight=0.0, norm_pix_loss=False).eval()
    out_raw = raw(pixel_values=x, mixing_assignment=a)
    assert out_raw.loss.item() == pytest.approx(((out_raw.logits - patchify(x, 8)) ** 2).mean(-1)[~own].mean().item(),
                                                rel=1e-5)


def test_total_loss_and_gradients():
    model = make_model(homocon_weight=0.5)
    out = model(pixel_values=images(8), mixing_assignment=assignment(2))
    m = out.metrics
    assert out.loss.item() == pytest.approx(m["reconstruction_loss"].item() + 0.5 * m["homocon_loss"].item(),
                                            rel=1e-5)
    out.loss.backward()
    assert model.segment_embed.weight.grad is not None and model.segment_embed.weight.grad.abs().sum() > 0
    assert model.decoder.mask_token.grad.abs().sum() > 0
    assert model.encoder.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0


def test_source_reconstruction_ignores_other_images_under_mask_attention():
    """With the oracle homology mask, image j's prediction depends only on image j's own patches."""
    model = make_model(homologous_attention="mask").eval()
    x, a = images(4), assignment(1)
    base = model(pixel_values=x, mixing_assignment=a)
    x2 = x.clone()
    x2[1:] = torch.randn(3, 3, 32, 32)
    out = model(pixel_values=x2, mixing_assignment=a)
    assert torch.allclose(out.logits[0], base.logits[0], atol=1e-5)
    assert not torch.allclose(out.logits[1], base.logits[1], atol=1e-3)


def test_incomplete_group_wraps_around():
    model = make_model().eval()
    x = images(6)
    a = assignment(2)
    out = model(pixel_values=x, mixing_assignment=a)
    assert out.logits.shape == (6, N, 8 * 8 * 3) and out.embeddings.shape == (6, 32)
    # the last group mixes images 4, 5, 0, 1: the filler slots read images 0 and 1
    tokens, _ = vit_embed_patches(model.encoder, x)
    members = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1])
    mixed = model.mix_tokens(tokens[members], a)
    n = int((a[1] == 2).nonzero()[0])
    assert torch.allclose(mixed[1, n], tokens[0, n] + model.segment_embed.weight[2])
    assert torch.isfinite(model(pixel_values=images(1)).loss)


# ----------------------------------------------------------------------------------------------------
# 4. training, views, save/load, presets
# ----------------------------------------------------------------------------------------------------
def test_view_policy_single_view():
    cfg = make_config()
    policy = build_view_generator(cfg)
    from PIL import Image

    img = Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype("uint8"))
    out = policy(img, np.random.default_rng(0))
    assert set(out) == {"pixel_values"} and out["pixel_values"].shape == (3, 32, 32)


def test_tiny_trainer_run(tmp_path):
    from hf_ssl.training.arguments import SSLTrainingArguments
    from hf_ssl.training.data import SSLViewDataset, load_image_stream
    from hf_ssl.training.trainer import SSLTrainer

    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ds = SSLViewDataset(load_image_stream("builtin:digits", shuffle_buffer=32), build_view_generator(model.config))
    args = SSLTrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=8,
                                save_strategy="no", logging_steps=1, disable_tqdm=True, learning_rate=1e-3)
    trainer = SSLTrainer(model=model, args=args, train_dataset=ds)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and all(np.isfinite(h["loss"]) for h in logged)
    after = model.state_dict()
    assert not torch.equal(before["segment_embed.weight"], after["segment_embed.weight"])


def test_save_load_round_trip(tmp_path):
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    model = make_model(homologous_attention="mask", homocon_temperature=0.2).eval()
    model.save_pretrained(tmp_path)
    MixedAEImageProcessor.from_ssl_config(model.config).save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(reloaded) is MixedAEForSelfSupervisedPretraining
    x, a = images(8), assignment(2)
    assert torch.equal(model(pixel_values=x, mixing_assignment=a).loss,
                       reloaded(pixel_values=x, mixing_assignment=a).loss)
    cfg = AutoConfig.from_pretrained(tmp_path)
    assert cfg.homologous_attention == "mask" and cfg.homocon_temperature == 0.2
    assert type(AutoImageProcessor.from_pretrained(tmp_path)) is MixedAEImageProcessor


def test_paper_defaults_and_presets():
    cfg = MixedAEConfig()
    assert cfg.mixing_ratio == 0.25 and cfg.group_size == 4 and cfg.homologous_attention == "topk"
    assert (cfg.decoder_hidden_size, cfg.decoder_depth, cfg.decoder_num_heads) == (512, 8, 16)
    assert cfg.norm_pix_loss and cfg.segment_embedding and cfg.backbone_config.hidden_size == 768
    assert cfg.augmentation["policy"] == "mixedae" and cfg.augmentation["crop_scale"] == [0.2, 1.0]
    demo = METHOD.make_config("cpu-demo")
    assert demo.image_size == 32 and demo.backbone_config.patch_size == 8 and demo.backbone_config.hidden_size == 128
    assert METHOD.demo_training["learning_rate"] == 1e-4
