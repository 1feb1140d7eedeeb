"""ALIGN: label-smoothed normalized softmax (hand reference), learnable temperature init, [CLS] pooling, no image
projection, EfficientNet/BERT towers, DDP-gathered loss, the alt-text filters, training and save/load."""

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

import hf_ssl  # noqa: F401
from hf_ssl.modeling.align import (METHOD, ALIGNConfig, ALIGNForSelfSupervisedPretraining, AltTextFilter,
                                   align_contrastive_loss, filter_dataset)
from ddp_utils import assert_ddp_matches_single, forward_backward, run_ranks, save_rank, shard_forward_backward
from tiny_configs import TINY_CONFIGS, tiny_config
from train_utils import tiny_training_run
from vl_utils import image_text_batch


def make_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return ALIGNForSelfSupervisedPretraining(tiny_config("align", **overrides))


def make_batch(n=4, seed=0, length=16, vocab=600):
    return image_text_batch(n, seed, length, vocab)


def _hand_loss(img, txt, temperature, eps):
    """Label-smoothed CE written out: target (1 - eps) on the pair + eps / N spread over all N columns."""
    img = img / np.linalg.norm(img, axis=1, keepdims=True)
    txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    logits = img @ txt.T / temperature
    n = len(img)

    def ce(mat):
        total = 0.0
        for i in range(n):
            logp = mat[i] - np.log(np.exp(mat[i]).sum())
            target = np.full(n, eps / n)
            target[i] += 1 - eps
            total += -(target * logp).sum()
        return total / n

    return (ce(logits) + ce(logits.T)) / 2


# ----------------------------------------------------------------------------------------------------
# loss, temperature, towers
# ----------------------------------------------------------------------------------------------------
def test_loss_equals_hand_written_label_smoothed_softmax():
    rng = np.random.default_rng(0)
    img, txt = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    f = lambda a: torch.nn.functional.normalize(torch.tensor(a, dtype=torch.float64), dim=-1)  # noqa: E731
    for temperature, eps in [(1.0, 0.1), (0.05, 0.1), (0.3, 0.0)]:
        loss, logits = align_contrastive_loss(f(img), f(txt), torch.tensor(1 / temperature, dtype=torch.float64), eps)
        assert loss.item() == pytest.approx(_hand_loss(img, txt, temperature, eps), rel=1e-6)
    smoothed, _ = align_contrastive_loss(f(img), f(img), torch.tensor(20.0, dtype=torch.float64), 0.1)
    plain, _ = align_contrastive_loss(f(img), f(img), torch.tensor(20.0, dtype=torch.float64), 0.0)
    assert smoothed.item() > plain.item()  # smoothing keeps a floor under the loss of perfectly aligned pairs


def test_model_loss_matches_reference_and_paper_init():
    model = make_model().eval()
    assert model.clamped_logit_scale().item() == pytest.approx(1.0)  # temperature initialised to 1.0
    assert model.config.label_smoothing == 0.1
    batch = make_batch()
    out = model(**batch)
    img = model.encode_image(batch["pixel_values"]).detach().double().numpy()
    txt = model.encode_text(batch["input_ids"], batch["attention_mask"]).detach().double().numpy()
    assert out.loss.item() == pytest.approx(_hand_loss(img, txt, 1.0, 0.1), rel=1e-5)
    assert out.metrics["temperature"].item() == pytest.approx(1.0)


def test_image_embedding_is_the_pooled_feature_and_text_uses_cls():
    model = make_model().eval()
    batch = make_batch()
    assert isinstance(model.visual_projection, torch.nn.Identity)  # no image projection
    joint, pooled = model.encode_image(batch["pixel_values"], return_pooled=True)
    assert torch.allclose(joint, torch.nn.functional.normalize(pooled, dim=-1), atol=1e-6)
    assert joint.shape[1] == model.config.backbone_config.hidden_dim == model.config.projection_dim
    assert type(model.encoder).__name__ == "EfficientNetModel" and type(model.text_encoder).__name__ == "BertModel"
    assert getattr(model.text_encoder, "pooler", None) is None  # [CLS] pooling, no tanh pooler
    hidden = model.text_encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    manual = torch.nn.functional.normalize(model.text_projection(hidden[:, 0]), dim=-1)
    assert torch.allclose(model.encode_text(batch["input_ids"], batch["attention_mask"]), manual, atol=1e-6)
    assert model.text_projection.bias is not None  # "FC layer with linear activation"


def test_temperature_is_learnt_and_gradients_reach_both_towers():
    model = make_model().train()
    model(**make_batch()).loss.backward()
    assert model.logit_scale.grad is not None and model.logit_scale.grad.abs().item() > 0
    for module in (model.encoder, model.text_encoder, model.text_projection):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_paper_default_towers():
    cfg = ALIGNConfig()
    assert cfg.backbone_config.model_type == "efficientnet"
    assert (cfg.backbone_config.width_coefficient, cfg.backbone_config.depth_coefficient) == (4.3, 5.3)  # L2
    assert cfg.projection_dim == 5504 and cfg.image_size == 289
    t = cfg.text_config
    assert (t.model_type, t.num_hidden_layers, t.hidden_size, t.num_attention_heads) == ("bert", 24, 1024, 16)
    assert cfg.context_length == 64 and cfg.init_temperature == 1.0
    assert METHOD.make_config("cpu-demo").image_size == 32


# ----------------------------------------------------------------------------------------------------
# DDP
# ----------------------------------------------------------------------------------------------------
def _ddp_worker(rank, world_size, out_dir):
    out, grads = shard_forward_backward(make_model().eval(), make_batch(n=8, seed=1), rank, world_size)
    save_rank(out_dir, rank, loss=out.loss.item(), logits=out.logits, grads=grads)


def test_ddp_gathered_loss_equals_single_process(tmp_path):
    ranks = run_ranks(_ddp_worker, tmp_path)
    model = make_model().eval()
    out = forward_backward(model, make_batch(n=8, seed=1))
    assert_ddp_matches_single(ranks, out.loss, model, atol=1e-4, rtol=1e-3)
    assert ranks[0]["logits"].shape == (4, 8)
    assert torch.allclose(torch.cat([ranks[0]["logits"], ranks[1]["logits"]]), out.logits, atol=1e-5)


# ----------------------------------------------------------------------------------------------------
# the noisy alt-text filters
# ----------------------------------------------------------------------------------------------------
def _png(w, h, seed=0):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return {"bytes": buf.getvalue(), "path": None}


def test_alt_text_filters_each_rule():
    good = "a small brown dog on the grass"
    rows = [{"image": _png(300, 240, 0), "text": good}]                          # kept
    rows.append({"image": _png(150, 400, 1), "text": "a red car on a road"})     # shorter side 150 <= 200
    rows.append({"image": _png(900, 250, 2), "text": "a long view of a bridge"})  # aspect 3.6 >= 3
    rows.append({"image": _png(300, 300, 3), "text": "dog"})                      # < 3 unigrams
    rows.append({"image": _png(300, 301, 4), "text": " ".join(["word"] * 21)})    # > 20 unigrams
    rows += [{"image": _png(310, 300, 10 + i), "text": "1920x1080 image file"} for i in range(11)]  # 11 images
    rows.append({"image": _png(320, 300, 30), "text": "a zyzzyva beetle photo"})  # rare tokens
    flt = AltTextFilter(vocabulary_size=10**6).fit(rows)
    assert "1920x1080" in flt.vocabulary and "1920x1080 image" in flt.vocabulary  # unigrams and bigrams
    reasons = [flt.reasons(r) for r in rows]
    assert reasons[0] == []
    assert "image_too_small" in reasons[1]
    assert "aspect_ratio" in reasons[2]
    assert "text_too_short" in reasons[3]
    assert "text_too_long" in reasons[4]
    assert all("text_shared_by_too_many_images" in r for r in reasons[5:16])
    # shared by exactly 10 images is allowed (the rule is "more than 10")
    flt10 = AltTextFilter(vocabulary_size=10**6).fit(rows[:1] + rows[5:15])
    assert all("text_shared_by_too_many_images" not in flt10.reasons(r) for r in rows[5:15])
    assert reasons[-1] == []  # with a vocabulary larger than the data nothing is rare
    # rare tokens: the vocabulary is the V most frequent unigrams + bigrams; a caption seen 3 times fills it exactly
    from hf_ssl.modeling.align.filtering_align import ngrams

    common = [{"image": _png(300, 300, 40 + i), "text": good} for i in range(3)]
    rare = {"image": _png(300, 300, 50), "text": "a small zyzzyva beetle"}
    flt_rare = AltTextFilter(vocabulary_size=len(set(ngrams(good)))).fit(common + [rare])
    assert flt_rare.vocabulary == set(ngrams(good))
    assert flt_rare.reasons(common[0]) == [] and flt_rare.reasons(rare) == ["rare_token"]


def test_alt_text_filter_images_with_too_many_texts_and_extra_filter():
    img = _png(300, 300, 0)
    rows = [{"image": img, "text": f"photo number {i} of a cat"} for i in range(4)]
    rows.append({"image": _png(300, 300, 1), "text": "photo number 9 of a cat"})
    flt = AltTextFilter(max_texts_per_image=3).fit(rows)
    assert all("too_many_texts_for_image" in flt.reasons(r) for r in rows[:4])
    assert flt.keep(rows[4])
    nsfw = AltTextFilter(extra_image_filter=lambda ex: "9" not in ex["text"]).fit(rows)
    assert not nsfw.keep(rows[4]) and "extra_image_filter" in nsfw.reasons(rows[4])
    with pytest.raises(RuntimeError):
        AltTextFilter().keep(rows[0])
    with pytest.raises(ValueError):
        AltTextFilter(min_unigrams=5, max_unigrams=2)


def test_filter_dataset_on_a_datasets_stream():
    from datasets import Dataset

    rows = [{"image": _png(300, 240, i)["bytes"], "text": t} for i, t in enumerate(
        ["a small brown dog on the grass", "dog", "a small brown dog in a park", "x"])]
    ds = Dataset.from_list(rows).to_iterable_dataset()
    kept, flt = filter_dataset(ds, image_column="image")
    texts = [r["text"] for r in kept]
    assert texts == ["a small brown dog on the grass", "a small brown dog in a park"]
    assert flt.image_texts and len(flt.text_images) == 4


# ----------------------------------------------------------------------------------------------------
# config errors, training, save/load, zero-shot
# ----------------------------------------------------------------------------------------------------
def test_bad_configs_and_inputs_raise():
    base = TINY_CONFIGS["align"]
    for bad in ({"init_temperature": -1.0}, {"label_smoothing": 1.0}, {"label_smoothing": -0.1},
                {"projection_dim": 64}, {"init_temperature": 0.001}):
        with pytest.raises(ValueError):
            ALIGNConfig(**{**base, **bad})
    ALIGNConfig(**{**base, "projection_dim": 64, "image_projection": True})  # allowed with an image projection
    model = make_model()
    batch = make_batch()
    with pytest.raises(ValueError, match="input_ids"):
        model(pixel_values=batch["pixel_values"])
    with pytest.raises(ValueError, match="vocab"):
        model(**{**batch, "input_ids": batch["input_ids"] + 10_000})
    with pytest.raises(ValueError, match="captions"):
        model(**{**batch, "input_ids": batch["input_ids"][:2], "attention_mask": batch["attention_mask"][:2]})


def test_tiny_trainer_run_and_save_load(tmp_path):
    from transformers import AutoModel

    from hf_ssl.training.data import SSLViewDataset, build_view_generator, load_image_stream

    model = make_model()
    before = model.logit_scale.item()
    ds = SSLViewDataset(load_image_stream("builtin:digits", shuffle_buffer=16), build_view_generator(model.config))
    trainer = tiny_training_run(model, ds, tmp_path / "run", max_steps=4, batch_size=8)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert model.logit_scale.item() != before
    model.eval().save_pretrained(tmp_path / "ckpt")
    reloaded = AutoModel.from_pretrained(tmp_path / "ckpt").eval()
    assert type(reloaded) is ALIGNForSelfSupervisedPretraining
    batch = make_batch()
    assert torch.allclose(model(**batch).loss, reloaded(**batch).loss, atol=1e-6)


def test_zero_shot_classifier_works():
    from hf_ssl.training.text import load_tokenizer

    model = make_model().eval()
    cfg = model.config
    tok = load_tokenizer(None, vocab_size=cfg.tokenizer_vocab_size, context_length=cfg.context_length)
    weights = model.zero_shot_classifier(tok, ["one", "two", "three"], ["a {}.", "the digit {}."])
    assert weights.shape == (3, cfg.projection_dim)
    assert torch.allclose(weights.norm(dim=-1), torch.ones(3), atol=1e-6)
    assert math.isfinite(float(weights.sum()))
