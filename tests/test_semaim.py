"""SemAIM invariants on a tiny ViT (CPU, 32 px images, 8 px patches -> 16 patches)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import hf_ssl  # noqa: F401  (registers the Auto classes)
from hf_ssl.modeling.backbones import patchify
from hf_ssl.modeling.semaim import METHOD, SemAIMConfig, SemAIMForSelfSupervisedPretraining, SemAIMImageProcessor
from hf_ssl.modeling.semaim.modeling_semaim import gaussian_blur, permutation_attention_masks

TINY_VIT = dict(model_type="vit", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                patch_size=8)
N = 16
GRID = (4, 4)


def make_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs.setdefault("target_blur_kernel_size", 3)
    cfg = SemAIMConfig(backbone_config=dict(TINY_VIT), image_size=32, **kwargs)
    return SemAIMForSelfSupervisedPretraining(cfg).eval()


def test_semantic_permutation_is_valid_and_center_out():
    model = make_model()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        tokens = model.encoder(pixel_values=x).last_hidden_state
        sim = model.semantic_similarity(tokens)
        model(x)
    # similarity: softmax over patches of cos(CLS, patch), computed independently here
    t = torch.nn.functional.normalize(tokens, dim=-1)
    manual = (t[:, :1] * t[:, 1:]).sum(-1).softmax(1)
    torch.testing.assert_close(sim, manual)
    rank = model.last_permutation
    order = rank.argsort(dim=1)
    for b in range(3):
        assert sorted(order[b].tolist()) == list(range(N))  # a permutation of all patches
        center = int(sim[b].argmax())
        assert int(order[b, 0]) == center  # the most semantic patch is predicted first
        rows, cols = order[b] // GRID[1], order[b] % GRID[1]
        dist = ((rows - center // GRID[1]) ** 2 + (cols - center % GRID[1]) ** 2).float().sqrt()
        assert torch.all(dist[1:] >= dist[:-1] - 1e-6)  # then outward by distance from it


def test_attention_permutation_follows_similarity_order():
    model = make_model(permutation_type="attention")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        sim = model.semantic_similarity(model.encoder(pixel_values=x).last_hidden_state)
        model(x)
    order = model.last_permutation.argsort(dim=1)
    ordered = torch.gather(sim, 1, order)
    assert torch.all(ordered[:, 1:] <= ordered[:, :-1] + 1e-7)
    # the gap anchor uses the mean patch token instead of CLS
    gap = make_model(permutation_type="attention", similarity_type="gap")
    tok = torch.randn(2, 1 + N, 32)
    t = torch.nn.functional.normalize(tok[:, 1:], dim=-1)
    a = torch.nn.functional.normalize(tok[:, 1:].mean(1, keepdim=True), dim=-1)
    torch.testing.assert_close(gap.semantic_similarity(tok), (a * t).sum(-1).softmax(1))


def test_attention_masks_match_the_permutation():
    rank = torch.tensor([[2.0, 0.0, 3.0, 1.0]])
    mh, mg = permutation_attention_masks(rank)
    see_h, see_g = mh[0, 0] == 0, mg[0, 0] == 0
    assert see_h[1:, 0].all() and see_g[1:, 0].all()  # everyone sees CLS
    assert see_h[0].tolist() == [True, False, False, False, False]  # CLS sees only itself
    for i in range(4):
        for j in range(4):
            assert bool(see_h[1 + i, 1 + j]) == bool(rank[0, j] <= rank[0, i])
            assert bool(see_g[1 + i, 1 + j]) == bool(rank[0, j] < rank[0, i])


def test_prediction_is_causal_in_the_permutation_order():
    model = make_model()
    x = torch.randn(2, 3, 32, 32)
    rank = torch.stack([torch.randperm(N).float() for _ in range(2)])
    with torch.no_grad():
        base = model(x, permutation=rank).logits
        for pos in (N - 1, N // 2, 0):  # perturb the patch predicted at position `pos` of the order
            x2 = x.clone()
            for b in range(2):
                patch = int(rank[b].argsort()[pos])
                r, c = divmod(patch, GRID[1])
                x2[b, :, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] += 3 * torch.randn(3, 8, 8)
            new = model(x2, permutation=rank).logits
            for b in range(2):
                not_after = rank[b] <= pos  # patches up to and including the perturbed one
                torch.testing.assert_close(new[b, not_after], base[b, not_after], atol=1e-5, rtol=1e-5)
                if pos < N - 1:
                    assert not torch.allclose(new[b, ~not_after], base[b, ~not_after], atol=1e-4)


def test_normalized_pixel_targets_and_loss():
    model = make_model(target_blur_kernel_size=None)
    x = torch.randn(2, 3, 32, 32)
    targets = model.pixel_targets(x)
    p = patchify(x, 8)
    expected = (p - p.mean(-1, keepdim=True)) / (p.var(-1, keepdim=True) + 1e-6).sqrt()
    torch.testing.assert_close(targets, expected)
    torch.testing.assert_close(targets.mean(-1), torch.zeros(2, N), atol=1e-5, rtol=0)
    with torch.no_grad():
        out = model(x)
    # loss = mean over ALL patches (the first one is predicted from CLS only)
    torch.testing.assert_close(out.loss, ((out.logits - expected) ** 2).mean())
    # blur: a normalized Gaussian kernel keeps a constant image constant away from the (zero-padded) border
    blurred = gaussian_blur(torch.ones(1, 3, 16, 16), 9, 1.0)
    torch.testing.assert_close(blurred[..., 4:-4, 4:-4], torch.ones(1, 3, 8, 8))
    blur_model = make_model(target_blur_kernel_size=9)
    pb = patchify(gaussian_blur(x, 9, 1.0), 8)
    torch.testing.assert_close(blur_model.pixel_targets(x),
                               (pb - pb.mean(-1, keepdim=True)) / (pb.var(-1, keepdim=True) + 1e-6).sqrt())
    assert not torch.allclose(blur_model.pixel_targets(x), targets)


def test_feature_target_is_stop_gradient_own_tokens():
    model = make_model(target="features").train()
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    with torch.no_grad():
        tok = model.encoder(pixel_values=x).last_hidden_state[:, 1:]
    pred = torch.nn.functional.normalize(out.logits.detach(), dim=-1)
    expected = ((pred - torch.nn.functional.normalize(tok, dim=-1)) ** 2).sum(-1).mean()
    torch.testing.assert_close(out.loss.detach(), expected)
    out.loss.backward()
    # the only gradient path into the encoder is the masked content stream (targets are detached)
    assert model.encoder.embeddings.patch_embeddings.projection.weight.grad is not None
    assert model.encoder.embeddings.position_embeddings.grad is None  # frozen sin-cos


def test_gradients_and_frozen_positions():
    model = make_model().train()
    model(torch.randn(2, 3, 32, 32)).loss.backward()
    assert all(p.grad is not None for p in model.query_blocks.parameters())
    assert not model.encoder.embeddings.position_embeddings.requires_grad


def test_bad_configs_and_inputs():
    with pytest.raises(ValueError, match="query_depth"):
        SemAIMConfig(backbone_config=dict(TINY_VIT), image_size=32, query_depth=3)
    with pytest.raises(ValueError, match="permutation_type"):
        SemAIMConfig(backbone_config=dict(TINY_VIT), image_size=32, permutation_type="spiral")
    with pytest.raises(ValueError, match="target_blur_kernel_size"):
        SemAIMConfig(backbone_config=dict(TINY_VIT), image_size=32, target_blur_kernel_size=4)
    with pytest.raises(ValueError, match="ViT"):
        SemAIMConfig(backbone_config="resnet-tiny", image_size=32)
    model = make_model()
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="permutation"):
        model(torch.randn(1, 3, 32, 32), permutation=torch.zeros(1, 5))


def test_tiny_training_run_and_save_load(tmp_path):
    from transformers import AutoModel, AutoModelForPreTraining

    from hf_ssl.training.arguments import SSLTrainingArguments
    from hf_ssl.training.data import SSLViewDataset, build_view_generator, load_image_stream
    from hf_ssl.training.trainer import SSLTrainer

    model = make_model().train()
    ds = SSLViewDataset(load_image_stream("builtin:digits", shuffle_buffer=32), build_view_generator(model.config))
    args = SSLTrainingArguments(output_dir=str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=4,
                                learning_rate=1e-3, logging_steps=1, save_strategy="no", disable_tqdm=True,
                                report_to=[])
    before = [p.detach().clone() for p in model.encoder.parameters() if p.requires_grad]
    trainer = SSLTrainer(model=model, args=args, train_dataset=ds)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs and all(math.isfinite(h["loss"]) for h in logs)
    after = [p for p in model.encoder.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(before, after))

    model.save_pretrained(tmp_path / "ckpt")
    SemAIMImageProcessor.from_ssl_config(model.config).save_pretrained(tmp_path / "ckpt")
    loaded = AutoModel.from_pretrained(tmp_path / "ckpt")
    assert isinstance(loaded, SemAIMForSelfSupervisedPretraining)
    assert isinstance(AutoModelForPreTraining.from_pretrained(tmp_path / "ckpt"), SemAIMForSelfSupervisedPretraining)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)
    assert not loaded.encoder.embeddings.position_embeddings.requires_grad
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    rank = torch.stack([torch.randperm(N).float() for _ in range(2)])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, permutation=rank).logits, model(x, permutation=rank).logits)


def test_cpu_demo_preset_builds():
    cfg = METHOD.make_config("cpu-demo")
    assert cfg.image_size == 32 and cfg.augmentation["policy"] == "single_view"
    assert cfg.backbone_config.num_hidden_layers % cfg.resolved_query_depth == 0
    paper = SemAIMConfig()
    assert (paper.permutation_type, paper.similarity_type, paper.target, paper.target_blur_kernel_size) == (
        "attention_center", "cls", "pixel_norm", 9)
