"""TIPS: two-token ViT forward around stock layers, the two caption contrastive terms, DINO + iBOT masked patch
distillation (only masked positions, stop-gradient teacher, EMA formula), loss vs hand-written references, DDP
equivalence of the gathered / all-reduced terms, view policy, training and save/load."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hf_ssl  # noqa: F401
from hf_ssl.modeling.clip import clip_contrastive_loss
from hf_ssl.modeling.distillation import masked_patch_distillation
from hf_ssl.modeling.tips import METHOD, TIPSConfig, TIPSForSelfSupervisedPretraining, ibot_masks
from ddp_utils import (assert_ddp_matches_single, forward_backward, mean_over_ranks, run_ranks, save_rank,
                       shard_forward_backward)
from tiny_configs import TINY_CONFIGS, tiny_config
from vl_utils import random_captions


def make_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return TIPSForSelfSupervisedPretraining(tiny_config("tips", **overrides))


def make_batch(n=4, seed=0, length=16, vocab=600, num_local=1):
    g = torch.Generator().manual_seed(seed)
    ids, mask = random_captions(g, (n, 2), length, vocab)
    views = [torch.randn(n, 3, 32, 32, generator=g)] + [torch.randn(n, 3, 16, 16, generator=g)
                                                         for _ in range(num_local)]
    masked = torch.zeros(n, 16, dtype=torch.bool)
    masked[:, [1, 2, 5, 6]] = True
    masked[0] = False  # one image without mask (contributes 0 to the iBOT term, as officially)
    return {"pixel_values": views, "input_ids": ids, "attention_mask": mask, "bool_masked_pos": masked}


# ----------------------------------------------------------------------------------------------------
# the two-token forward
# ----------------------------------------------------------------------------------------------------
def test_two_token_forward_matches_a_hand_built_sequence_through_stock_layers():
    model = make_model().eval()
    with torch.no_grad():
        model.second_cls_token.normal_()
    x = torch.randn(2, 3, 32, 32)
    tokens = model.encode_tokens(x)
    assert tokens.shape == (2, 2 + 16, 32)
    vit = model.encoder
    emb = vit.embeddings(x)  # stock: [CLS + pos0, patches + pos]
    seq = torch.cat([emb[:, :1], model.second_cls_token.expand(2, -1, -1), emb[:, 1:]], dim=1)  # no position
    h = seq
    for layer in vit.encoder.layer if hasattr(vit, "encoder") else vit.layers:
        out = layer(h)
        h = out[0] if isinstance(out, tuple) else out
    assert torch.allclose(tokens, vit.layernorm(h), atol=1e-5)
    # the second token changes the first token's output (it takes part in attention) ...
    stock = vit(pixel_values=x).last_hidden_state
    assert not torch.allclose(tokens[:, 0], stock[:, 0], atol=1e-4)
    # ... while get_image_features / export stay the stock one-CLS ViT
    assert torch.allclose(model.get_image_features(x), stock[:, 0], atol=1e-6)
    # masking a patch replaces its input (the masked position's output changes)
    masked = torch.zeros(2, 16, dtype=torch.bool)
    masked[:, 3] = True
    t_mask = model.encode_tokens(x, masked)
    assert not torch.allclose(t_mask[:, 2 + 3], tokens[:, 2 + 3])  # the masked patch input was replaced


def test_mask_token_replaces_patch_embedding_before_positions():
    model = make_model().eval()
    with torch.no_grad():
        model.mask_token.normal_()
    x = torch.randn(1, 3, 32, 32)
    masked = torch.zeros(1, 16, dtype=torch.bool)
    masked[0, [0, 7]] = True
    got = model.encode_tokens(x, masked)
    emb = model.encoder.embeddings
    patches = emb.patch_embeddings(x)
    patches[0, [0, 7]] = model.mask_token[0, 0]
    seq = torch.cat([emb.cls_token, patches], 1) + emb.position_embeddings
    seq = torch.cat([seq[:, :1], model.second_cls_token, seq[:, 1:]], 1)
    from hf_ssl.modeling.backbones import vit_forward_tokens

    assert torch.allclose(got, vit_forward_tokens(model.encoder, seq), atol=1e-6)
    # two different images whose only difference is inside the masked patches give the same tokens
    x2 = x.clone()
    x2[..., 0:8, 0:8] += 5.0  # patch 0
    assert torch.allclose(model.encode_tokens(x2, masked), got, atol=1e-5)


def test_ibot_masks_probability_and_ratio():
    torch.manual_seed(0)
    m = ibot_masks(400, (8, 8), 0.5, (0.1, 0.5), min_block_patches=4)
    counts = m.sum(1).float()
    masked_images = (counts > 0).float().mean().item()
    assert 0.4 < masked_images < 0.6
    frac = counts[counts > 0] / 64
    assert frac.min() >= 0.09 and frac.max() <= 0.51
    assert ibot_masks(10, (4, 4), 0.0, (0.1, 0.5)).sum() == 0
    assert (ibot_masks(10, (4, 4), 1.0, (0.5, 0.5)).sum(1) == 8).all()


# ----------------------------------------------------------------------------------------------------
# losses vs hand references
# ----------------------------------------------------------------------------------------------------
def test_masked_patch_distillation_matches_reference_and_uses_only_masked_positions():
    torch.manual_seed(0)
    s = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    q = torch.softmax(torch.randn(3, 5, 7, dtype=torch.float64), -1)
    mask = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    got = masked_patch_distillation(s, q, mask, 0.1)
    ref = []
    for i in range(3):
        idx = np.flatnonzero(mask[i].numpy())
        if len(idx) == 0:
            ref.append(0.0)
            continue
        logp = F.log_softmax(s[i, idx].detach() / 0.1, -1).numpy()
        ref.append(float(np.mean(-(q[i, idx].numpy() * logp).sum(-1))))
    assert got.item() == pytest.approx(np.mean(ref), rel=1e-6)  # computed in float32
    got.backward()
    assert (s.grad[~mask] == 0).all() and (s.grad[mask].abs().sum(-1) > 0).all()
    with pytest.raises(ValueError, match="mask"):
        masked_patch_distillation(s, q, mask[:, :4], 0.1)


def test_total_loss_is_the_weighted_sum_of_hand_terms():
    model = make_model().eval()
    batch = make_batch()
    out = model(**batch)
    cfg = model.config
    g, loc = batch["pixel_values"]
    mask = batch["bool_masked_pos"]
    tokens = model.encode_tokens(g, mask)  # contrastive_on_masked_view=True: the masked pass
    text = model.encode_text(batch["input_ids"].reshape(8, 16), batch["attention_mask"].reshape(8, 16)).reshape(4, 2, -1)
    scale = model.clamped_logit_scale()
    web = clip_contrastive_loss(F.normalize(model.visual_projection(tokens[:, 0]), dim=-1), text[:, 0], scale)[0]
    syn = clip_contrastive_loss(F.normalize(model.visual_projection(tokens[:, 1]), dim=-1), text[:, 1], scale)[0]
    t = model.encode_tokens(g, teacher=True)
    center = model.distillation.center  # eval mode: centers are not updated
    q_cls = torch.softmax((model.teacher_head(t[:, 0]) - center) / cfg.teacher_temperature, -1)
    s_local = model.head(model.encode_tokens(loc)[:, 0])
    dino = torch.sum(-q_cls * F.log_softmax(s_local / cfg.student_temperature, -1), -1).mean()
    q_patch = torch.softmax((model.teacher_head(t[:, 2:]) - model.patch_distillation.center) / cfg.teacher_temperature, -1)
    ce = torch.sum(-q_patch * F.log_softmax(model.head(tokens[:, 2:]) / cfg.student_temperature, -1), -1)
    ibot = ((ce * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
    assert out.loss.item() == pytest.approx((web + syn + dino + ibot).item(), rel=1e-5)
    for key, ref in (("web_contrastive_loss", web), ("synthetic_contrastive_loss", syn), ("distillation_loss", dino),
                     ("masked_loss", ibot)):
        assert out.metrics[key].item() == pytest.approx(ref.item(), rel=1e-5), key
    # switching the synthetic-caption term off removes exactly that term; an unmasked contrastive pass differs
    assert make_model(synthetic_caption_loss_weight=0.0).eval()(**batch).loss.item() == pytest.approx(
        (web + dino + ibot).item(), rel=1e-5)
    clean = make_model(contrastive_on_masked_view=False).eval()(**batch)
    assert clean.metrics["masked_loss"].item() == pytest.approx(ibot.item(), rel=1e-5)
    assert clean.metrics["web_contrastive_loss"].item() != pytest.approx(web.item(), rel=1e-6)


def test_teacher_gets_no_gradient_and_ema_formula():
    model = make_model().train()
    out = model(**make_batch())
    out.loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("teacher_"))
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith("teacher_"))
    for module in (model.encoder, model.text_encoder, model.head, model.visual_projection):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert model.second_cls_token.grad.abs().sum() > 0 and model.mask_token.grad.abs().sum() > 0
    # EMA: teacher = m * teacher + (1 - m) * student with m from the half-cosine 0.996 -> 1
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(0.1)
        model.second_cls_token.add_(1.0)
    t0 = model.teacher_encoder.embeddings.cls_token.clone()
    c0 = model.teacher_second_cls_token.clone()
    s = model.encoder.embeddings.cls_token.detach().clone()
    model.on_step_end(5, 10)
    m = 1.0 - (1.0 - 0.996) * (np.cos(np.pi * 0.5) + 1) / 2
    assert torch.allclose(model.teacher_encoder.embeddings.cls_token, m * t0 + (1 - m) * s, atol=1e-7)
    assert torch.allclose(model.teacher_second_cls_token, m * c0 + (1 - m) * model.second_cls_token, atol=1e-7)


def test_centers_update_only_in_training_and_follow_the_teacher_mean():
    model = make_model().eval()
    batch = make_batch()
    model(**batch)
    assert model.distillation.center.abs().sum() == 0 and model.patch_distillation.center.abs().sum() == 0
    model.train()
    t = model.encode_tokens(batch["pixel_values"][0], teacher=True)
    with torch.no_grad():
        expected_patch = 0.1 * model.teacher_head(t[:, 2:]).reshape(-1, 64).mean(0, keepdim=True)
        expected_cls = 0.1 * model.teacher_head(t[:, 0]).mean(0, keepdim=True)
    model(**batch)
    assert torch.allclose(model.patch_distillation.center, expected_patch, atol=1e-6)
    assert torch.allclose(model.distillation.center, expected_cls, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# DDP
# ----------------------------------------------------------------------------------------------------
def _ddp_worker(rank, world_size, out_dir):
    model = make_model().train()
    out, grads = shard_forward_backward(model, make_batch(n=8, seed=1), rank, world_size)
    save_rank(out_dir, rank, loss=out.loss.item(), terms={k: v.item() for k, v in out.metrics.items()}, grads=grads,
              center=model.distillation.center.clone(), patch_center=model.patch_distillation.center.clone())


def test_ddp_equals_single_process(tmp_path):
    ranks = run_ranks(_ddp_worker, tmp_path)
    model = make_model().train()
    out = forward_backward(model, make_batch(n=8, seed=1))
    terms = mean_over_ranks(ranks, "terms")
    for key in ("web_contrastive_loss", "synthetic_contrastive_loss", "distillation_loss", "masked_loss"):
        assert terms[key] == pytest.approx(out.metrics[key].item(), rel=1e-5), key
    for r in ranks:  # centers are all-reduced: every process holds the single-process center
        assert torch.allclose(r["center"], model.distillation.center, atol=1e-6)
        assert torch.allclose(r["patch_center"], model.patch_distillation.center, atol=1e-6)
    assert_ddp_matches_single(ranks, out.loss, model, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------------------
# data, config, training, save/load
# ----------------------------------------------------------------------------------------------------
def test_view_policy_gives_global_local_views_and_two_captions():
    from PIL import Image

    from hf_ssl.training.data import build_view_generator

    policy = build_view_generator(tiny_config("tips"))
    rng = np.random.default_rng(0)
    img = Image.new("RGB", (40, 40))
    out = policy(img, rng, example={"text": "a dog.", "synthetic_caption": "A brown dog on the left of a ball."})
    assert [tuple(v.shape) for v in out["pixel_values"]] == [(3, 32, 32), (3, 16, 16)]
    assert out["input_ids"].shape == (2, 16)
    texts = [policy.tokenizer.decode(x, skip_special_tokens=True) for x in out["input_ids"]]
    assert texts[0] == "a dog." and texts[1].startswith("a brown dog")
    digit = np.zeros((32, 32), np.uint8)
    digit[4:28, 2:8] = 255
    out = policy(Image.fromarray(digit).convert("RGB"), rng, example={"label": 1})
    texts = [policy.tokenizer.decode(x, skip_special_tokens=True) for x in out["input_ids"]]
    assert "one" in texts[0] and texts[1].startswith("the image shows the handwritten digit one")


def test_bad_configs_and_inputs_raise():
    base = TINY_CONFIGS["tips"]
    for bad in ({"mask_ratio_range": [0.5, 0.1]}, {"mask_ratio_range": [0.1, 1.0]}, {"mask_probability": 1.5},
                {"teacher_momentum": 1.5}, {"student_temperature": 0}, {"masked_loss_weight": -1},
                {"web_caption_loss_weight": 0, "synthetic_caption_loss_weight": 0},
                {"augmentation": {"num_local": 0, "local_size": 16}}, {"augmentation": {"num_local": 1, "local_size": 10}},
                {"backbone_config": dict(TINY_CONFIGS["clip"]["backbone_config"])}):
        with pytest.raises(ValueError):
            TIPSConfig(**{**base, **bad})
    TIPSConfig(**{**base, "distillation_loss_weight": 0.0, "augmentation": {"num_local": 0, "local_size": 16}})  # no DINO: fine
    model = make_model()
    batch = make_batch()
    with pytest.raises(ValueError, match="input_ids"):
        model(pixel_values=batch["pixel_values"])
    with pytest.raises(ValueError, match=r"\[batch, 2, length\]"):
        model(**{**batch, "input_ids": batch["input_ids"][:, 0], "attention_mask": batch["attention_mask"][:, 0]})
    with pytest.raises(ValueError, match="bool_masked_pos"):
        model(**{**batch, "bool_masked_pos": batch["bool_masked_pos"][:, :5]})
    with pytest.raises(ValueError, match="local crops"):
        model(**{**batch, "pixel_values": batch["pixel_values"][:1]})
    with pytest.raises(ValueError, match="channel"):
        model(**{**batch, "pixel_values": [torch.randn(4, 1, 32, 32), batch["pixel_values"][1]]})
    cfg = TIPSConfig()
    assert cfg.backbone_config.patch_size == 14 and cfg.context_length == 64 and cfg.head_out_dim == 65536
    assert cfg.image_mean == [0.0, 0.0, 0.0] and cfg.image_std == [1.0, 1.0, 1.0]
    assert METHOD.make_config("cpu-demo").augmentation["policy"] == "tips_views"


def test_tiny_trainer_run_zero_shot_and_save_load(tmp_path):
    from transformers import AutoModel

    from hf_ssl.modeling.clip.evaluation_clip import zero_shot_evaluate
    from hf_ssl.training.arguments import SSLTrainingArguments
    from hf_ssl.training.data import SSLViewDataset, build_view_generator, load_image_stream
    from hf_ssl.training.trainer import SSLTrainer

    model = make_model()
    ds = SSLViewDataset(load_image_stream("builtin:digits", shuffle_buffer=16), build_view_generator(model.config))
    args = SSLTrainingArguments(output_dir=str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=8,
                                learning_rate=1e-3, logging_steps=1, save_strategy="no", disable_tqdm=True)
    teacher_before = model.teacher_encoder.embeddings.cls_token.clone()
    trainer = SSLTrainer(model=model, args=args, train_dataset=ds)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3 and all(np.isfinite(h["loss"]) and np.isfinite(h["masked_loss"]) for h in logs)
    assert not torch.equal(model.teacher_encoder.embeddings.cls_token, teacher_before)  # EMA ran
    metrics = zero_shot_evaluate(model, max_samples=40)
    assert 0.0 <= metrics["zero_shot_accuracy"] <= 1.0
    model.eval().save_pretrained(tmp_path / "ckpt")
    reloaded = AutoModel.from_pretrained(tmp_path / "ckpt").eval()
    assert type(reloaded) is TIPSForSelfSupervisedPretraining
    batch = make_batch()
    assert torch.allclose(model(**batch).loss, reloaded(**batch).loss, atol=1e-6)
    assert torch.equal(model.second_cls_token, reloaded.second_cls_token)
