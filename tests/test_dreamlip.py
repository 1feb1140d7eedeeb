"""DreamLIP: sub-caption splitting/sampling, generated long captions, circle loss / multi-positive loss / grouping
loss against hand-written references, DDP equivalence of the gathered losses, training and save/load."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hf_ssl  # noqa: F401
from hf_ssl.modeling.dreamlip import (METHOD, DreamLIPConfig, DreamLIPForSelfSupervisedPretraining, circle_loss,
                                      describe_digit, group_patches, grouping_loss, multi_positive_loss,
                                      sample_subcaptions, split_caption)
from ddp_utils import (assert_ddp_matches_single, forward_backward, mean_over_ranks, run_ranks, save_rank,
                       shard_forward_backward)
from tiny_configs import TINY_CONFIGS, tiny_config
from train_utils import loss_logs, tiny_training_run
from vl_utils import image_text_batch


def make_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return DreamLIPForSelfSupervisedPretraining(tiny_config("dreamlip", **overrides))


def make_batch(n=4, t=3, seed=0, length=16, vocab=600):
    return image_text_batch(n, seed, length, vocab, texts_per_image=t)


# ----------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------
def test_split_and_sample_subcaptions():
    text = "A dog runs. It is brown.\nThe grass is green</s>A ball flies.  ."
    assert split_caption(text) == ["A dog runs", "It is brown", "The grass is green", "A ball flies"]
    rng = np.random.default_rng(0)
    subs = sample_subcaptions(split_caption(text), 3, rng)
    assert len(subs) == 3 and len(set(subs)) == 3  # enough sentences: without replacement
    subs = sample_subcaptions(["only one"], 4, rng)
    assert subs == ["only one"] * 4  # too few: with replacement
    merged = sample_subcaptions(split_caption(text), 2, rng, merge=2)
    assert all(s.count(". ") == 1 for s in merged)


def test_generated_long_captions_describe_measured_properties():
    from PIL import Image

    img = np.zeros((32, 32), np.uint8)
    img[4:28, 2:8] = 255  # a thick vertical bar at the left
    cap = describe_digit(Image.fromarray(img).convert("RGB"), "one")
    sentences = split_caption(cap)
    assert sentences[0] == "The image shows the handwritten digit one" and len(sentences) == 6
    assert "left" in cap and "tall and narrow" in cap and "upright" in cap
    slanted = np.zeros((32, 32), np.uint8)
    for y in range(4, 28):  # x grows with y: the top leans left (a '\' stroke)
        slanted[y, 4 + y // 2: 8 + y // 2] = 255
    assert "leans to the left" in describe_digit(Image.fromarray(slanted).convert("RGB"), "one")


def test_view_policy_gives_raw_caption_plus_subcaptions():
    from PIL import Image

    from hf_ssl.training.data import build_view_generator

    config = tiny_config("dreamlip")
    policy = build_view_generator(config)
    rng = np.random.default_rng(0)
    img = Image.new("RGB", (40, 40))
    out = policy(img, rng, example={"text": "a dog.", "long_caption": "A dog runs. It is brown. The sky is blue."})
    assert out["input_ids"].shape == (3, 16) and out["attention_mask"].shape == (3, 16)
    texts = [policy.tokenizer.decode(x, skip_special_tokens=True) for x in out["input_ids"]]
    assert texts[0] == "a dog."
    assert set(texts[1:]) <= {"a dog runs", "it is brown", "the sky is blue"} and len(set(texts[1:])) == 2
    labelled = policy(img, rng, example={"label": 3})
    texts = [policy.tokenizer.decode(x, skip_special_tokens=True) for x in labelled["input_ids"]]
    assert "three" in texts[0]


# ----------------------------------------------------------------------------------------------------
# losses vs hand-written references
# ----------------------------------------------------------------------------------------------------
def _circle_ref(sim, pos, m, gamma):
    out = []
    for i in range(sim.shape[0]):
        sp, sn = sim[i][pos[i]], sim[i][~pos[i]]
        lp = np.log(np.sum(np.exp(-gamma * np.maximum(1 + m - sp, 0) * (sp - (1 - m)))))
        ln = np.log(np.sum(np.exp(gamma * np.maximum(sn + m, 0) * (sn - m))))
        out.append(np.log1p(np.exp(lp + ln)))
    return np.mean(out)


def test_circle_loss_matches_reference_and_stops_weight_gradients():
    rng = np.random.default_rng(0)
    sim = np.tanh(rng.normal(size=(3, 7)))
    pos = np.zeros((3, 7), bool)
    pos[0, [0, 1]] = pos[1, [2]] = pos[2, [3, 4, 5]] = True
    got = circle_loss(torch.tensor(sim), torch.tensor(pos), 0.25, 4.0)
    assert got.item() == pytest.approx(_circle_ref(sim, pos, 0.25, 4.0), rel=1e-6)
    # gradient: the weights a_p / a_n are constants; d loss / d s_p <= 0 (pull positives up), >= 0 for negatives
    s = torch.tensor(sim, requires_grad=True)
    circle_loss(s, torch.tensor(pos), 0.25, 4.0).backward()
    assert (s.grad[torch.tensor(pos)] <= 0).all() and (s.grad[~torch.tensor(pos)] >= 0).all()


def test_multi_positive_loss_uses_all_texts_of_the_image_as_positives():
    torch.manual_seed(0)
    img = F.normalize(torch.randn(3, 8, dtype=torch.float64), dim=-1)
    txt = F.normalize(torch.randn(3, 4, 8, dtype=torch.float64), dim=-1)
    got = multi_positive_loss(img, txt, 0.25, 32.0)
    sim = (img @ txt.reshape(-1, 8).t()).numpy()
    pos = np.kron(np.eye(3), np.ones((1, 4))).astype(bool)  # image i <-> texts 4i..4i+3
    assert got.item() == pytest.approx(_circle_ref(sim, pos, 0.25, 32.0), rel=1e-6)


def _group_ref(txt, patches, thr):
    b, t, _ = txt.shape
    out = np.zeros_like(txt)
    for i in range(b):
        for j in range(t):
            s = patches[i] @ txt[i, j]
            w = (s - s.min()) / (s.max() - s.min() + 1e-10)
            w[w < thr] = 0
            w = w / w.sum()
            g = (w[:, None] * patches[i]).sum(0)
            out[i, j] = g / np.linalg.norm(g)
    return out


def test_grouping_matches_reference_and_selects_matching_patches():
    torch.manual_seed(0)
    txt = F.normalize(torch.randn(2, 3, 8, dtype=torch.float64), dim=-1)
    patches = F.normalize(torch.randn(2, 5, 8, dtype=torch.float64), dim=-1)
    for thr in (0.0, 0.5):
        got = group_patches(txt, patches, thr)
        assert np.allclose(got.numpy(), _group_ref(txt.numpy(), patches.numpy(), thr), atol=1e-10)
    # the top-similarity patch always gets weight 1 before renormalisation; a high threshold keeps only it
    only_best = group_patches(txt, patches, 0.999)
    best = torch.einsum("btd,bpd->btp", txt, patches).argmax(-1)
    assert torch.allclose(only_best, torch.stack([patches[i, best[i]] for i in range(2)]), atol=1e-10)
    # loss = symmetric InfoNCE over the flattened (image, text) pairs
    grouped = group_patches(txt, patches, 0.0)
    scale = 7.0
    logits = scale * txt.reshape(6, 8) @ grouped.reshape(6, 8).t()
    ref = (F.cross_entropy(logits, torch.arange(6)) + F.cross_entropy(logits.t(), torch.arange(6))) / 2
    assert grouping_loss(txt, patches, scale).item() == pytest.approx(ref.item(), rel=1e-6)


def test_model_total_loss_is_the_weighted_sum_of_hand_terms():
    from hf_ssl.modeling.clip import clip_contrastive_loss

    model = make_model().eval()
    batch = make_batch()
    out = model(**batch)
    img, local, _ = model.encode_image_with_patches(batch["pixel_values"])
    assert local.shape == (4, 16, 16)  # 32 px / 8 px patches = 16 patch tokens, CLS excluded
    txt = model.encode_text(batch["input_ids"].reshape(12, 16), batch["attention_mask"].reshape(12, 16))
    txt = txt.reshape(4, 3, -1)
    scale = model.clamped_logit_scale()
    con = sum(clip_contrastive_loss(img, txt[:, i], scale)[0] for i in range(3)) / 3
    mp = multi_positive_loss(img, txt, 0.25, 32.0)
    gl = grouping_loss(txt, local, scale)
    assert out.loss.item() == pytest.approx((con + 0.1 * mp + gl).item(), rel=1e-5)
    assert out.metrics["multi_positive_loss"].item() == pytest.approx(mp.item(), rel=1e-5)
    no_group = make_model(grouping_loss_weight=0.0).eval()(**batch)
    assert no_group.loss.item() == pytest.approx((con + 0.1 * mp).item(), rel=1e-5)


def test_gradients_reach_both_towers():
    model = make_model().train()
    model(**make_batch()).loss.backward()
    for module in (model.encoder, model.text_encoder, model.visual_projection, model.text_projection):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert model.logit_scale.grad.abs().item() > 0


# ----------------------------------------------------------------------------------------------------
# DDP
# ----------------------------------------------------------------------------------------------------
def _ddp_worker(rank, world_size, out_dir):
    out, grads = shard_forward_backward(make_model().eval(), make_batch(n=8, seed=1), rank, world_size)
    save_rank(out_dir, rank, loss=out.loss.item(), terms={k: v.item() for k, v in out.metrics.items()}, grads=grads)


def test_ddp_equals_single_process(tmp_path):
    ranks = run_ranks(_ddp_worker, tmp_path)
    model = make_model().eval()
    out = forward_backward(model, make_batch(n=8, seed=1))
    terms = mean_over_ranks(ranks, "terms")
    for key in ("contrastive_loss", "multi_positive_loss", "grouping_loss"):
        assert terms[key] == pytest.approx(out.metrics[key].item(), rel=1e-5), key
    assert_ddp_matches_single(ranks, out.loss, model, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------------------
# config, training, save/load
# ----------------------------------------------------------------------------------------------------
def test_bad_configs_and_inputs_raise():
    base = TINY_CONFIGS["dreamlip"]
    for bad in ({"num_subcaptions": 0}, {"circle_margin": 1.0}, {"circle_gamma": 0}, {"grouping_threshold": 1.0},
                {"grouping_norm": "l2"}, {"multi_positive_loss_weight": -1}, {"init_temperature": -0.1},
                {"contrastive_loss_weight": 0, "multi_positive_loss_weight": 0, "grouping_loss_weight": 0}):
        with pytest.raises(ValueError):
            DreamLIPConfig(**{**base, **bad})
    model = make_model()
    batch = make_batch()
    with pytest.raises(ValueError, match="input_ids"):
        model(pixel_values=batch["pixel_values"])
    with pytest.raises(ValueError, match="caption groups"):
        model(**{**batch, "input_ids": batch["input_ids"][:2], "attention_mask": batch["attention_mask"][:2]})
    with pytest.raises(ValueError, match="vocab"):
        model(**{**batch, "input_ids": batch["input_ids"] + 10_000})
    cfg = DreamLIPConfig()
    assert cfg.num_subcaptions == 6 and cfg.backbone_config.model_type == "vit" and cfg.context_length == 77
    assert METHOD.make_config("cpu-demo").augmentation["policy"] == "long_caption"


def test_tiny_trainer_run_and_save_load(tmp_path):
    from transformers import AutoModel

    from hf_ssl.training.data import SSLViewDataset, build_view_generator, load_image_stream

    model = make_model()
    ds = SSLViewDataset(load_image_stream("builtin:digits", shuffle_buffer=16), build_view_generator(model.config))
    trainer = tiny_training_run(model, ds, tmp_path / "run", batch_size=8)
    logs = loss_logs(trainer)
    assert len(logs) == 3 and all(np.isfinite(h["loss"]) and np.isfinite(h["grouping_loss"]) for h in logs)
    model.eval().save_pretrained(tmp_path / "ckpt")
    reloaded = AutoModel.from_pretrained(tmp_path / "ckpt").eval()
    assert type(reloaded) is DreamLIPForSelfSupervisedPretraining
    batch = make_batch()
    assert torch.allclose(model(**batch).loss, reloaded(**batch).loss, atol=1e-6)
