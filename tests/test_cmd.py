"""CMD invariants: gated-attention MIL weights, each distillation term vs a hand-written reference, stop-gradient on the
teacher, EMA, DDP-synchronised centers, a tiny SSLTrainer run and save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hf_ssl  # noqa: F401
from ddp_utils import run_distributed
from hf_ssl.modeling.cmd import METHOD, CMDConfig, CMDForSelfSupervisedPretraining
from hf_ssl.modeling.cmd.modeling_cmd import GatedAttentionMIL, inter_level_kl, mil_bag_distribution
from hf_ssl.modeling.distillation import matched_region_distillation
from hf_ssl.modeling.momentum import cosine_schedule

TINY_VIT = dict(model_type="vit", hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                patch_size=8)


def make_config(**kwargs):
    for k, v in dict(image_size=32, head_out_dim=64, head_hidden_dim=32, head_bottleneck_dim=16, mil_attention_dim=16,
                     augmentation={"num_local": 1, "local_size": 16}).items():
        kwargs.setdefault(k, v)
    return CMDConfig(backbone_config=dict(TINY_VIT), **kwargs)


def make_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return CMDForSelfSupervisedPretraining(make_config(**kwargs))


def views(seed=1, b=4):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, 32, 32, generator=g), torch.randn(b, 3, 32, 32, generator=g),
            torch.randn(b, 3, 16, 16, generator=g)]


def test_defaults_and_config_errors():
    c = CMDConfig()
    assert c.backbone_config.model_type == "vit" and c.backbone_config.hidden_size == 384
    assert (c.head_out_dim, c.student_temperature, c.teacher_temperature, c.teacher_momentum) == (65536, 0.1, 0.07,
                                                                                                  0.996)
    assert (c.image_loss_weight, c.region_loss_weight, c.inter_level_weight, c.norm_last_layer) == (0.5, 0.5, 1.0,
                                                                                                    False)
    assert c.augmentation["num_global"] == 2 and c.augmentation["num_local"] == 8
    for bad in (dict(student_temperature=0.0), dict(teacher_temperature=-1.0), dict(mil_attention_dim=0),
                dict(center_momentum=1.0), dict(inter_level_weight=-0.1), dict(teacher_temperature_warmup_steps=-1),
                dict(image_loss_weight=0.0, region_loss_weight=0.0, inter_level_weight=0.0),
                dict(augmentation={"num_global": 1}), dict(inter_level_target="bag"),
                dict(image_feature="max")):
        with pytest.raises(ValueError):
            make_config(**bad)
    with pytest.raises(ValueError, match="ViT"):
        CMDConfig(backbone_config="resnet-tiny", image_size=32)


def test_gated_attention_weights_formula_normalisation_and_padding():
    torch.manual_seed(0)
    mil = GatedAttentionMIL(6, attention_dim=5)
    h = torch.randn(3, 7, 6)
    a = mil(h)
    assert a.shape == (3, 7) and bool((a >= 0).all())
    torch.testing.assert_close(a.sum(1), torch.ones(3))
    # hand-written gated attention: softmax_k w^T (tanh(V h_k) * sigmoid(U h_k))
    ref = torch.zeros(3, 7)
    for b in range(3):
        s = torch.stack([mil.attention_w.weight[0] @ (torch.tanh(mil.attention_v.weight @ h[b, k] + mil.attention_v.bias)
                                                       * torch.sigmoid(mil.attention_u.weight @ h[b, k]
                                                                       + mil.attention_u.bias))
                         + mil.attention_w.bias[0] for k in range(7)])
        ref[b] = torch.softmax(s, 0)
    torch.testing.assert_close(a, ref)
    # permutation equivariance: reordering the instances of a bag reorders its weights
    perm = torch.randperm(7)
    torch.testing.assert_close(mil(h[:, perm]), a[:, perm])
    # padding: masked instances get exactly zero weight and do not influence the others
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[0, 5:] = False
    mask[2, 1] = False
    garbage = h.clone()
    garbage[~mask] = 1e3
    am = mil(garbage, mask)
    assert bool((am[~mask] == 0).all())
    torch.testing.assert_close(am.sum(1), torch.ones(3))
    torch.testing.assert_close(am[0, :5], mil(h[:1, :5])[0])
    with pytest.raises(ValueError, match="at least one valid"):
        mil(h, torch.zeros(3, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="instances"):
        mil(h[0])
    pooled = GatedAttentionMIL.pool(h, a)
    torch.testing.assert_close(pooled, (a.unsqueeze(-1) * h).sum(1))


def test_matched_region_distillation_matches_hand_reference():
    torch.manual_seed(0)
    b, ns, nt, k, d, tau = 2, 3, 4, 5, 6, 0.2
    s_logits, s_feat = torch.randn(b, ns, k), torch.randn(b, ns, d)
    t_probs, t_feat = torch.softmax(torch.randn(b, nt, k), -1), torch.randn(b, nt, d)
    loss = matched_region_distillation(s_logits, s_feat, t_probs, t_feat, tau)
    total = 0.0
    for i in range(b):
        for j in range(ns):
            sims = [F.cosine_similarity(s_feat[i, j], t_feat[i, m], dim=0) for m in range(nt)]
            best = int(np.argmax([float(x) for x in sims]))
            total += -(t_probs[i, best] * F.log_softmax(s_logits[i, j] / tau, -1)).sum()
    torch.testing.assert_close(loss, total / (b * ns))
    with pytest.raises(ValueError):
        matched_region_distillation(s_logits, s_feat, t_probs[:, :, :3], t_feat, tau)


def test_inter_level_and_bag_match_hand_reference():
    torch.manual_seed(0)
    p_img = torch.softmax(torch.randn(2, 4), -1)
    p_reg = torch.softmax(torch.randn(2, 3, 4), -1)
    w = torch.softmax(torch.randn(2, 3), -1)
    bag = mil_bag_distribution(p_reg, w)
    torch.testing.assert_close(bag, torch.stack([sum(w[i, n] * p_reg[i, n] for n in range(3)) for i in range(2)]))
    torch.testing.assert_close(bag.sum(-1), torch.ones(2))
    ref = sum((p_img[i] * (p_img[i].log() - bag[i].log())).sum() for i in range(2)) / 2
    torch.testing.assert_close(inter_level_kl(p_img, bag), ref)
    assert float(inter_level_kl(p_img, p_img)) == pytest.approx(0.0, abs=1e-6)


def test_full_objective_equals_its_terms_by_hand():
    model = make_model(inter_level_weight=0.7).train()
    v = views()
    student = [model.view_outputs(x) for x in v]
    with torch.no_grad():
        teacher = [model.view_outputs(x, teacher=True) for x in v[:2]]
    tau_t, tau_s = 0.07, 0.1
    loss, terms = model.compute_loss(student, teacher, tau_t, update_centers=False)
    # centers are zero at init: teacher targets are plain sharpened softmaxes
    q_img = [F.softmax(t["image_logits"] / tau_t, -1) for t in teacher]
    q_reg = [F.softmax(t["region_logits"] / tau_t, -1) for t in teacher]
    img, reg, pairs = 0.0, 0.0, 0
    for i in range(2):
        for s in range(3):
            if s == i:
                continue
            img += (-(q_img[i] * F.log_softmax(student[s]["image_logits"] / tau_s, -1)).sum(-1)).mean()
            reg += matched_region_distillation(student[s]["region_logits"], student[s]["patches"], q_reg[i],
                                               teacher[i]["patches"], tau_s)
            pairs += 1
    inter = sum(inter_level_kl(F.softmax(s["image_logits"] / tau_s, -1),
                               mil_bag_distribution(F.softmax(s["region_logits"] / tau_s, -1), s["mil_weights"]))
                for s in student) / 3
    torch.testing.assert_close(terms["image_loss"], img / pairs)
    torch.testing.assert_close(terms["region_loss"], reg / pairs)
    torch.testing.assert_close(terms["inter_level_loss"], inter)
    torch.testing.assert_close(loss, 0.5 * img / pairs + 0.5 * reg / pairs + 0.7 * inter)
    assert float(model.distillation.center.abs().sum()) == 0.0  # update_centers=False


def test_teacher_is_stop_gradient_and_student_mil_learns():
    model = make_model().train()
    out = model(pixel_values=views())
    out.loss.backward()
    teacher = [n for n, _ in model.named_parameters() if n.startswith("teacher_")]
    assert teacher and all(p.grad is None and not p.requires_grad for n, p in model.named_parameters()
                           if n.startswith("teacher_"))
    for prefix in ("encoder.", "head.", "region_head.", "mil."):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(prefix)]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), prefix
    # both centers moved (training) and the teacher outputs carry no graph
    assert model.distillation.center.abs().sum() > 0 and model.region_distillation.center.abs().sum() > 0
    with torch.no_grad():
        t = model.view_outputs(views()[0], teacher=True)
    assert not any(v.requires_grad for v in t.values())


@pytest.mark.parametrize("target", ["image", "both"])
def test_inter_level_target_controls_the_gradient_direction(target):
    model = make_model(image_loss_weight=0.0, region_loss_weight=0.0, inter_level_target=target).train()
    out = model(pixel_values=views())
    out.loss.backward()
    head = [p.grad for p in model.head.parameters()]
    region = [p.grad for p in model.region_head.parameters()] + [p.grad for p in model.mil.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in region if g is not None) and any(g is not None
                                                                                          for g in region)
    if target == "image":  # the image-level distribution is a stop-gradient target of the MIL bag
        assert all(g is None or float(g.abs().sum()) == 0.0 for g in head)
    else:
        assert any(g is not None and g.abs().sum() > 0 for g in head)


def test_ema_update_and_temperature_schedule():
    model = make_model(teacher_temperature_warmup_steps=10)
    assert float(model.teacher_temperature_now) == pytest.approx(0.04)
    with torch.no_grad():
        for p in model.mil.parameters():
            p.add_(1.0)
    before = [p.detach().clone() for p in model.teacher_mil.parameters()]
    model.on_step_end(5, 10)
    m = cosine_schedule(5, 10, 0.996, 1.0)
    for tb, s, t in zip(before, model.mil.parameters(), model.teacher_mil.parameters()):
        torch.testing.assert_close(t, m * tb + (1 - m) * s)
    assert float(model.teacher_temperature_now) == pytest.approx(0.04 + 0.5 * (0.07 - 0.04))


def test_features_are_teacher_cls_and_bad_input_is_clear():
    model = make_model().eval()
    x = views()[0]
    torch.testing.assert_close(model.get_image_features(x), model.teacher_encoder(pixel_values=x).last_hidden_state[:, 0])
    cls, patches = model.encode_view(x)
    torch.testing.assert_close(cls, model.encoder(pixel_values=x).last_hidden_state[:, 0])
    mean_model = make_model(image_feature="mean")
    image, patches = mean_model.encode_view(x)
    torch.testing.assert_close(image, patches.mean(1))
    with pytest.raises(ValueError, match="channels"):
        model(pixel_values=[torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)])
    with pytest.raises(ValueError, match="batch size"):
        model(pixel_values=[torch.randn(2, 3, 32, 32), torch.randn(3, 3, 32, 32)])
    with pytest.raises(ValueError, match="divisible"):
        model(pixel_values=[torch.randn(2, 3, 32, 32), torch.randn(2, 3, 20, 20)])


def _ddp_worker(rank, world, out_dir):
    model = make_model().train()
    v = [x[rank * 2:(rank + 1) * 2] for x in views()]
    out = model(pixel_values=v)
    torch.save({"loss": out.loss.detach(), "center": model.distillation.center.clone(),
                "region_center": model.region_distillation.center.clone()}, f"{out_dir}/rank{rank}.pt")


def test_centers_are_synchronised_across_processes(tmp_path):
    run_distributed(_ddp_worker, tmp_path, str(tmp_path))
    model = make_model().train()
    out = model(pixel_values=views())
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for r in ranks:
        torch.testing.assert_close(r["center"], model.distillation.center, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(r["region_center"], model.region_distillation.center, atol=1e-6, rtol=1e-5)
    # every term is a per-image mean, so the mean of the two half-batch losses is the full-batch loss
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, out.loss.detach(), atol=1e-5, rtol=1e-5)


def test_tiny_training_run_and_save_load(tmp_path):
    from transformers import AutoModel

    from hf_ssl.training.arguments import SSLTrainingArguments
    from hf_ssl.training.data import SSLViewDataset, build_view_generator, load_image_stream
    from hf_ssl.training.trainer import SSLTrainer

    config = METHOD.make_config("cpu-demo", backbone_config=dict(TINY_VIT), head_out_dim=64, head_hidden_dim=32,
                                head_bottleneck_dim=16, mil_attention_dim=16)
    torch.manual_seed(0)
    model = CMDForSelfSupervisedPretraining(config)
    train = SSLViewDataset(load_image_stream("builtin:digits", shuffle_buffer=16), build_view_generator(config))
    args = SSLTrainingArguments(output_dir=str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=8,
                                learning_rate=1e-3, logging_steps=1, save_strategy="no", disable_tqdm=True)
    trainer = SSLTrainer(model=model, args=args, train_dataset=train)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3 and all(np.isfinite(h["loss"]) for h in logs)
    assert all(np.isfinite(h["inter_level_loss"]) and np.isfinite(h["region_loss"]) for h in logs)
    model.save_pretrained(tmp_path / "ckpt")
    reloaded = AutoModel.from_pretrained(tmp_path / "ckpt").eval()
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(reloaded.get_image_features(x), model.get_image_features(x))
    torch.testing.assert_close(reloaded.region_distillation.center, model.region_distillation.center)
