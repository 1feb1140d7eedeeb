"""SOLIDER invariants: per-image pseudo semantic labels (batch-permutation consistent, top-to-bottom part order), the
semantic controller (exact stock Swin without it, monotone modulation in lambda, exact fold into the exported stock
Swin), loss terms vs hand references, stop-gradient teacher, DDP-synchronised center, tiny training run, save/load."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hf_ssl  # noqa: F401
from ddp_utils import run_distributed
from hf_ssl.modeling.momentum import cosine_schedule
from hf_ssl.modeling.solider import METHOD, SOLIDERConfig, SOLIDERForSelfSupervisedPretraining
from hf_ssl.modeling.solider.modeling_solider import (controlled_swin_forward, semantic_part_labels,
                                                      weighted_token_cross_entropy)

TINY_SWIN = dict(model_type="swin", embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=2, patch_size=4,
                 drop_path_rate=0.0)  # deterministic train-mode forwards (stock Swin default: 0.1)


def make_config(**kwargs):
    for k, v in dict(image_size=32, head_out_dim=64, head_hidden_dim=32, head_bottleneck_dim=16,
                     augmentation={"num_local": 1, "local_size": 16}).items():
        kwargs.setdefault(k, v)
    return SOLIDERConfig(backbone_config=dict(kwargs.pop("backbone_config", TINY_SWIN)), **kwargs)


def make_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return SOLIDERForSelfSupervisedPretraining(make_config(**kwargs))


def views(seed=1, b=4):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, 32, 32, generator=g), torch.randn(b, 3, 32, 32, generator=g),
            torch.randn(b, 3, 16, 16, generator=g)]


def test_defaults_and_config_errors():
    c = SOLIDERConfig()
    assert c.backbone_config.model_type == "swin" and list(c.backbone_config.depths) == [2, 2, 6, 2]
    assert c.backbone_config.window_size == 7 and c.backbone_config.embed_dim == 96
    assert (c.num_parts, c.part_head_layers, c.semantic_loss_weight, c.foreground_min_fraction) == (3, 3, 1.0, 0.5)
    assert (c.head_out_dim, c.teacher_temperature, c.teacher_momentum, c.semantic_weight_sampling) == (
        65536, 0.04, 0.996, "binary")
    assert c.augmentation["global_scale"] == [0.8, 1.0] and c.augmentation["num_local"] == 8
    for bad in (dict(student_temperature=0.0), dict(teacher_temperature=-0.1), dict(num_parts=0),
                dict(semantic_weight=1.5), dict(foreground_min_fraction=1.0), dict(semantic_loss_weight=-1.0),
                dict(semantic_weight_sampling="beta"), dict(augmentation={"num_global": 1}),
                dict(backbone_config=dict(TINY_SWIN, depths=[1], num_heads=[2]))):
        with pytest.raises(ValueError):
            make_config(**bad)
    with pytest.raises(ValueError, match="swin"):
        SOLIDERConfig(backbone_config="vit-micro", image_size=32)


def _synthetic_tokens():
    """Two 4x4 token grids: rows 0-2 foreground (large norm) in three horizontal bands of different directions, row 3
    background (small norm)."""
    g = torch.Generator().manual_seed(0)
    dirs = torch.eye(8)[:3] * 10
    grid = torch.zeros(4, 4, 8)
    for r in range(3):
        grid[r] = dirs[r]
    grid[3] = 0.1
    a = grid.reshape(16, 8) + 0.01 * torch.randn(16, 8, generator=g)
    b = grid.flip(-1).reshape(16, 8) + 0.01 * torch.randn(16, 8, generator=g)  # other directions, same layout
    return torch.stack([a, b])


def test_pseudo_labels_parts_ordered_top_to_bottom_and_background():
    labels, valid = semantic_part_labels(_synthetic_tokens(), (4, 4), num_parts=3, min_foreground=0.5)
    assert valid.tolist() == [True, True]
    expected = torch.tensor([1] * 4 + [2] * 4 + [3] * 4 + [0] * 4)
    for i in range(2):
        assert torch.equal(labels[i], expected)
    # too little foreground: the image gets no labels
    little = _synthetic_tokens()[:1].clone()
    little[0, 4:] = 0.1
    lab, val = semantic_part_labels(little, (4, 4), 3, min_foreground=0.5)
    assert not bool(val[0]) and int(lab.abs().sum()) == 0


def test_pseudo_labels_are_consistent_under_batch_permutation():
    model = make_model().eval()
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        _, tokens, grid = model.encode_view(x, torch.ones(6), teacher=True)
    labels, valid = semantic_part_labels(tokens, grid, 3, 0.3)
    perm = torch.tensor([4, 2, 0, 5, 1, 3])
    with torch.no_grad():
        _, tokens_p, _ = model.encode_view(x[perm], torch.ones(6), teacher=True)
    labels_p, valid_p = semantic_part_labels(tokens_p, grid, 3, 0.3)
    assert torch.equal(labels_p, labels[perm]) and torch.equal(valid_p, valid[perm])
    assert bool(valid.any())  # the test exercises labelled images
    lab_syn, _ = semantic_part_labels(_synthetic_tokens()[[1, 0]], (4, 4), 3)
    assert torch.equal(lab_syn, semantic_part_labels(_synthetic_tokens(), (4, 4), 3)[0][[1, 0]])


def test_controller_off_is_the_stock_swin_and_lambda_changes_features():
    model = make_model().eval()
    x = torch.randn(3, 3, 32, 32)
    pooled, tokens, grid = controlled_swin_forward(model.teacher_encoder, None, x)
    torch.testing.assert_close(pooled, model.teacher_encoder(pixel_values=x).pooler_output)
    assert grid == (4, 4) and tokens.shape == (3, 16, 32)
    f0 = model.get_image_features(x, semantic_weight=0.0)
    f1 = model.get_image_features(x, semantic_weight=1.0)
    assert not torch.allclose(f0, f1)
    per_image = model.get_image_features(x, semantic_weight=torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(per_image[1], f1[1])
    torch.testing.assert_close(per_image[0], f0[0])
    torch.testing.assert_close(model.get_image_features(x), f1)  # default lambda = config.semantic_weight = 1
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.get_image_features(x, semantic_weight=1.2)
    with pytest.raises(ValueError, match="one value per image"):
        model.get_image_features(x, semantic_weight=torch.tensor([0.1, 0.2]))


def test_modulation_is_monotone_in_lambda_and_matches_formula():
    model = make_model()
    ctrl = model.controller
    lams = torch.linspace(0, 1, 11)
    scale, shift = ctrl.modulation(0, lams)  # [11, C]
    s = torch.stack([lams, 1 - lams], 1)
    torch.testing.assert_close(scale, F.softplus(s @ ctrl.scale[0].weight.t() + ctrl.scale[0].bias))
    torch.testing.assert_close(shift, s @ ctrl.shift[0].weight.t() + ctrl.shift[0].bias)
    # per channel, scale and shift move monotonically from lambda = 0 to lambda = 1 (direction = sign of W[:,0]-W[:,1])
    for values, linear in ((scale, ctrl.scale[0]), (shift, ctrl.shift[0])):
        diffs = values[1:] - values[:-1]
        direction = torch.sign(linear.weight[:, 0] - linear.weight[:, 1])
        assert bool(((diffs * direction) >= -1e-7).all())
    # features interpolate continuously: closer lambdas give closer features
    x = torch.randn(2, 3, 32, 32)
    f = [model.get_image_features(x, semantic_weight=v) for v in (0.0, 0.05, 0.5)]
    assert float((f[1] - f[0]).norm()) < float((f[2] - f[0]).norm())


def test_export_folds_the_controller_exactly_and_loads_without_hf_ssl(tmp_path):
    model = make_model(semantic_weight=0.3).eval()
    with torch.no_grad():  # make the modulation far from trivial
        for p in model.teacher_controller.parameters():
            p.normal_(0, 0.5)
    x = torch.randn(2, 3, 32, 32)
    for lam in (0.0, 0.7):
        stock = model.encoder_at_semantic_weight(lam)
        torch.testing.assert_close(stock(pixel_values=x).pooler_output, model.get_image_features(x, semantic_weight=lam),
                                   atol=1e-5, rtol=1e-5)
    model.export_encoder(tmp_path / "enc")
    model.export_encoder(tmp_path / "base", semantic_weight="none")
    torch.save({"x": x, "features": model.get_image_features(x),
                "base": controlled_swin_forward(model.teacher_encoder, None, x)[0]}, tmp_path / "expected.pt")
    script = f"""
import json, sys, torch
sys.modules["hf_ssl"] = None
from transformers import AutoModel
exp = torch.load({str(tmp_path / 'expected.pt')!r})
for name, key in (("enc", "features"), ("base", "base")):
    d = {str(tmp_path)!r} + "/" + name
    enc = AutoModel.from_pretrained(d).eval()
    assert enc.config.model_type == "swin"
    with torch.no_grad():
        feats = enc(pixel_values=exp["x"]).pooler_output
    assert torch.allclose(feats, exp[key], atol=1e-5), name
    meta = json.load(open(d + "/hf_ssl_export.json"))
    assert meta["semantic_weight"] == (0.3 if name == "enc" else None)
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_small_crops_keep_the_window_and_leave_the_stock_blocks_untouched():
    model = make_model(backbone_config=dict(TINY_SWIN, window_size=4)).eval()
    blocks = [b for st in model.encoder.encoder.layers for b in st.blocks]
    before = [(b.window_size, b.shift_size) for b in blocks]
    out = controlled_swin_forward(model.encoder, model.controller, torch.randn(2, 3, 16, 16), torch.ones(2))
    assert out[0].shape == (2, 32) and torch.isfinite(out[0]).all()  # 2x2 last-stage map < window 4: padded
    assert [(b.window_size, b.shift_size) for b in blocks] == before


def test_semantic_loss_matches_hand_reference():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 4)
    labels = torch.randint(0, 4, (3, 5))
    lam = torch.tensor([1.0, 0.0, 0.5])
    ref = sum(lam[i] * -F.log_softmax(logits[i, t], -1)[labels[i, t]] for i in range(3) for t in range(5)) / 15
    torch.testing.assert_close(weighted_token_cross_entropy(logits, labels, lam), ref)


def test_objective_equals_dino_plus_semantic_by_hand():
    model = make_model(mask_part_views=False).train()
    v = views()
    lam = torch.tensor([1.0, 0.0, 1.0, 1.0])
    out = model(pixel_values=v, semantic_weight=lam)
    # recompute with the same (deterministic) pieces; the center was zero when the loss was computed
    with torch.no_grad():
        g = torch.cat(v[:2])
        _, sem_tokens, grid = model.encode_view(g, torch.ones(8), teacher=True)
        labels, valid = semantic_part_labels(sem_tokens, grid, 3, 0.5, model.config.kmeans_iterations)
        q = [F.softmax(t / 0.04, -1) for t in model.teacher_head(model.encode_view(g, lam.repeat(2), teacher=True)[0])
             .chunk(2)]
        s_pooled_g, s_tokens, _ = model.encode_view(g, lam.repeat(2))
        s = list(s_pooled_g.chunk(2)) + [model.encode_view(v[2], lam)[0]]
        s_logits = [model.head(p) for p in s]
        dino, pairs = 0.0, 0
        for i in range(2):
            for j in range(3):
                if i != j:
                    dino += (-(q[i] * F.log_softmax(s_logits[j] / 0.1, -1)).sum(-1)).mean()
                    pairs += 1
        idx = valid.nonzero().flatten()
        sem = weighted_token_cross_entropy(model.part_head(s_tokens[idx]), labels[idx], lam.repeat(2)[idx]) \
            if len(idx) else torch.tensor(0.0)
    torch.testing.assert_close(out.metrics["dino_loss"], dino / pairs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.metrics["semantic_loss"], sem, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss.detach(), dino / pairs + sem, atol=1e-5, rtol=1e-5)


def test_part_erased_views_zero_exactly_the_part_pixels():
    model = make_model()
    x = torch.randn(1, 3, 32, 32) + 5.0
    labels = torch.tensor([[1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 0, 0, 3, 3, 0, 0]])
    erased = model.part_erased_views(x, labels, (4, 4), part=2)
    cell = labels.reshape(4, 4).repeat_interleave(8, 0).repeat_interleave(8, 1)
    assert bool((erased[0][:, cell == 2] == 0).all())
    torch.testing.assert_close(erased[0][:, cell != 2], x[0][:, cell != 2])


def test_teacher_stop_gradient_and_ema():
    model = make_model().train()
    out = model(pixel_values=views(), semantic_weight=torch.ones(4))
    out.loss.backward()
    assert all(p.grad is None and not p.requires_grad for n, p in model.named_parameters() if n.startswith("teacher_"))
    for prefix in ("encoder.", "controller.", "head.", "part_head."):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters()
                   if n.startswith(prefix)), prefix
    assert float(out.metrics["foreground_fraction"]) > 0
    with torch.no_grad():
        for p in model.controller.parameters():
            p.add_(1.0)
    before = [p.detach().clone() for p in model.teacher_controller.parameters()]
    model.on_step_end(3, 10)
    m = cosine_schedule(3, 10, 0.996, 1.0)
    for tb, s, t in zip(before, model.controller.parameters(), model.teacher_controller.parameters()):
        torch.testing.assert_close(t, m * tb + (1 - m) * s)


def test_bad_inputs_are_clear_errors():
    model = make_model().train()
    with pytest.raises(ValueError, match="channels"):
        model(pixel_values=[torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)])
    with pytest.raises(ValueError, match="batch size"):
        model(pixel_values=[torch.randn(2, 3, 32, 32), torch.randn(3, 3, 32, 32)])
    with pytest.raises(ValueError, match="same size"):
        model(pixel_values=[torch.randn(2, 3, 32, 32), torch.randn(2, 3, 16, 16)])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model(pixel_values=views(b=2), semantic_weight=torch.tensor([-0.5, 0.5]))


def _ddp_worker(rank, world, out_dir):
    model = make_model(mask_part_views=False).train()
    v = [x[rank * 2:(rank + 1) * 2] for x in views()]
    out = model(pixel_values=v, semantic_weight=torch.tensor([1.0, 0.0, 1.0, 1.0])[rank * 2:(rank + 1) * 2])
    torch.save({"dino": out.metrics["dino_loss"], "center": model.distillation.center.clone()},
               f"{out_dir}/rank{rank}.pt")


def test_center_is_synchronised_across_processes(tmp_path):
    run_distributed(_ddp_worker, tmp_path, str(tmp_path))
    model = make_model(mask_part_views=False).train()
    out = model(pixel_values=views(), semantic_weight=torch.tensor([1.0, 0.0, 1.0, 1.0]))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for r in ranks:
        torch.testing.assert_close(r["center"], model.distillation.center, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close((ranks[0]["dino"] + ranks[1]["dino"]) / 2, out.metrics["dino_loss"], atol=1e-5,
                               rtol=1e-5)


def test_tiny_training_run_and_save_load(tmp_path):
    from transformers import AutoModel

    from hf_ssl.training.arguments import SSLTrainingArguments
    from hf_ssl.training.data import SSLViewDataset, build_view_generator, load_image_stream
    from hf_ssl.training.trainer import SSLTrainer

    config = METHOD.make_config("cpu-demo", backbone_config=dict(TINY_SWIN), head_out_dim=64, head_hidden_dim=32,
                                head_bottleneck_dim=16)
    torch.manual_seed(0)
    model = SOLIDERForSelfSupervisedPretraining(config)
    train = SSLViewDataset(load_image_stream("builtin:digits", shuffle_buffer=16), build_view_generator(config))
    args = SSLTrainingArguments(output_dir=str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=8,
                                learning_rate=1e-3, logging_steps=1, save_strategy="no", disable_tqdm=True)
    trainer = SSLTrainer(model=model, args=args, train_dataset=train)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3 and all(np.isfinite(h["loss"]) and np.isfinite(h["semantic_loss"]) for h in logs)
    model.save_pretrained(tmp_path / "ckpt")
    reloaded = AutoModel.from_pretrained(tmp_path / "ckpt").eval()
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    for lam in (0.0, 1.0):
        torch.testing.assert_close(reloaded.get_image_features(x, semantic_weight=lam),
                                   model.get_image_features(x, semantic_weight=lam))
