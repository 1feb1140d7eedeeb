"""ChAda-ViT invariants: channel-adaptive tokens, padded channels masked out, DINO teacher, single-channel export."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import hf_ssl  # noqa: F401
from hf_ssl.modeling.chada_vit import METHOD, ChAdaViTConfig, ChAdaViTForSelfSupervisedPretraining
from hf_ssl.modeling.chada_vit.modeling_chada_vit import channel_adaptive_tokens
from hf_ssl.modeling.momentum import cosine_schedule
from hf_ssl.training.data import SSLDataCollator, build_view_generator

TINY_VIT = dict(model_type="vit", hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                patch_size=8)


def make_config(**kwargs):
    for k, v in dict(image_size=32, head_out_dim=64, head_hidden_dim=32, head_bottleneck_dim=16,
                     augmentation={"num_local": 1, "local_size": 16}).items():
        kwargs.setdefault(k, v)
    return ChAdaViTConfig(backbone_config=dict(TINY_VIT), **kwargs)


def make_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return ChAdaViTForSelfSupervisedPretraining(make_config(**kwargs))


def test_defaults_and_config_errors():
    c = ChAdaViTConfig()
    assert c.max_channels == 10 and c.backbone_config.num_channels == 1 and c.backbone_config.hidden_size == 192
    assert (c.head_out_dim, c.student_temperature, c.teacher_temperature, c.teacher_momentum) == (65536, 0.1, 0.04,
                                                                                                  0.996)
    with pytest.raises(ValueError, match="one channel at a time"):
        ChAdaViTConfig(backbone_config=dict(TINY_VIT, num_channels=3), image_size=32)
    with pytest.raises(ValueError, match="max_channels"):
        make_config(num_channels=4, max_channels=3, image_mean=[0.5] * 4, image_std=[0.5] * 4)
    with pytest.raises(ValueError, match="ViT"):
        ChAdaViTConfig(backbone_config="resnet-tiny", image_size=32)
    with pytest.raises(ValueError, match="channel_subset_prob"):
        make_config(augmentation={"channel_subset_prob": 1.5})


def test_tokens_share_positions_and_differ_by_channel_embedding():
    model = make_model().eval()
    x = torch.randn(1, 1, 32, 32).expand(1, 3, 32, 32).contiguous()  # the same image in every channel slot
    seq, keep = channel_adaptive_tokens(model.encoder, model.channel_embeddings, x)
    n = 16
    assert seq.shape == (1, 1 + 3 * n, 32) and keep.all()
    per_channel = seq[0, 1:].reshape(3, n, 32)
    for c in range(3):  # identical patches + positions; only the channel embedding differs
        torch.testing.assert_close(per_channel[c] - model.channel_embeddings[c], per_channel[0] - model.channel_embeddings[0])
    assert not torch.allclose(per_channel[0], per_channel[1])


def test_padded_channels_are_masked_out_of_attention():
    model = make_model().eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 32, 32, generator=g)
    mask = torch.tensor([[True, True, False], [True, True, False]])
    garbage = x.clone()
    garbage[:, 2] = 100 * torch.randn(2, 32, 32, generator=g)
    a = model.get_image_features(x, channel_mask=mask)
    b = model.get_image_features(garbage, channel_mask=mask)
    c = model.get_image_features(x[:, :2])  # the same image given with two channel slots and no padding
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a, model.get_image_features(x))  # the third channel matters when present


def test_view_policy_channel_subsets():
    config = make_config(augmentation={"num_local": 1, "local_size": 16, "channel_subset_prob": 1.0})
    policy = build_view_generator(config)
    img = Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype("uint8"))
    rng = np.random.default_rng(0)
    batch = SSLDataCollator()([policy(img, rng) for _ in range(16)])
    mask = batch["channel_mask"]
    assert mask.shape == (16, 3) and bool((mask.sum(1) >= 1).all()) and bool((mask.sum(1) < 3).any())
    for v in batch["pixel_values"]:  # absent channels are zero in every crop
        assert torch.all(v[~mask] == 0)
    full = build_view_generator(make_config(augmentation={"num_local": 1, "local_size": 16,
                                                          "channel_subset_prob": 0.0}))
    assert all(full(img, rng)["channel_mask"].all() for _ in range(5))


def test_dino_teacher_gets_no_gradient_and_follows_the_ema():
    model = make_model().train()
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(4, 3, 32, 32, generator=g), torch.randn(4, 3, 32, 32, generator=g),
             torch.randn(4, 3, 16, 16, generator=g)]
    out = model(pixel_values=views, channel_mask=torch.tensor([[1, 1, 1], [1, 0, 0], [0, 1, 1], [1, 0, 1]]).bool())
    out.loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("teacher_"))
    assert model.channel_embeddings.grad is not None and model.channel_embeddings.grad.abs().sum() > 0
    assert model.distillation.center.abs().sum() > 0  # centering updated in training
    with torch.no_grad():
        model.channel_embeddings.add_(1.0)
    before = model.teacher_channel_embeddings.detach().clone()
    model.on_step_end(5, 10)
    m = cosine_schedule(5, 10, 0.996, 1.0)
    torch.testing.assert_close(model.teacher_channel_embeddings, m * before + (1 - m) * model.channel_embeddings)


def test_single_channel_export_matches_without_hf_ssl(tmp_path):
    model = make_model().eval()
    model.export_encoder(tmp_path / "enc")
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    torch.save({"x": x, "features": model.get_image_features(x)}, tmp_path / "expected.pt")
    script = f"""
import sys, torch
sys.modules["hf_ssl"] = None
from transformers import AutoModel
enc = AutoModel.from_pretrained({str(tmp_path / 'enc')!r}).eval()
exp = torch.load({str(tmp_path / 'expected.pt')!r})
assert enc.config.num_channels == 1
with torch.no_grad():
    feats = enc(pixel_values=exp["x"]).last_hidden_state[:, 0]
assert torch.allclose(feats, exp["features"], atol=1e-5)
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_tiny_training_run(tmp_path):
    from hf_ssl.training.arguments import SSLTrainingArguments
    from hf_ssl.training.data import SSLViewDataset, load_image_stream
    from hf_ssl.training.trainer import SSLTrainer

    config = METHOD.make_config("cpu-demo", backbone_config=dict(TINY_VIT), head_out_dim=64, head_hidden_dim=32,
                                head_bottleneck_dim=16)
    torch.manual_seed(0)
    model = ChAdaViTForSelfSupervisedPretraining(config)
    train = SSLViewDataset(load_image_stream("builtin:digits", shuffle_buffer=16), build_view_generator(config))
    args = SSLTrainingArguments(output_dir=str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=8,
                                learning_rate=1e-3, logging_steps=1, save_strategy="no", disable_tqdm=True)
    trainer = SSLTrainer(model=model, args=args, train_dataset=train)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3 and all(np.isfinite(h["loss"]) for h in logs)
    assert all(1.0 <= h["channels_per_image"] <= 3.0 for h in logs)


# ----------------------------------------------------------------------------------------------------
# DDP: the teacher centre is all-reduced, so two half-batch processes equal one process on the whole batch
# ----------------------------------------------------------------------------------------------------
def _ddp_batch():
    g = torch.Generator().manual_seed(3)
    views = [torch.randn(8, 3, 32, 32, generator=g), torch.randn(8, 3, 32, 32, generator=g),
             torch.randn(8, 3, 16, 16, generator=g)]
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 1, 1], [1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 1, 0], [1, 1, 1]])
    return {"pixel_values": views, "channel_mask": mask.bool()}


def _ddp_worker(rank, world_size, out_dir):
    from ddp_utils import save_rank, shard_forward_backward

    model = make_model().train()
    model(**_ddp_batch())  # a first step moves the centre (all-reduced), so the second loss depends on it
    model.zero_grad(set_to_none=True)
    out, grads = shard_forward_backward(model, _ddp_batch(), rank, world_size)
    save_rank(out_dir, rank, loss=out.loss.item(), grads=grads, center=model.distillation.center.clone())


def test_ddp_two_processes_match_single_process(tmp_path):
    from ddp_utils import assert_ddp_matches_single, forward_backward, run_ranks

    ranks = run_ranks(_ddp_worker, tmp_path)
    model = make_model().train()
    model(**_ddp_batch())
    model.zero_grad(set_to_none=True)
    out = forward_backward(model, _ddp_batch())
    assert_ddp_matches_single(ranks, out.loss, model, atol=1e-5, rtol=1e-4)
    for r in ranks:
        torch.testing.assert_close(r["center"], model.distillation.center, atol=1e-6, rtol=1e-5)
