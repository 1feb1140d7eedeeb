"""CLIP (vision-language dual encoder): loss, logit scale, DDP-gathered logits, tokenizer, data path, metrics,
training and save/load."""

import json
import math

import numpy as np
import pytest
import torch

import hf_ssl  # noqa: F401
from hf_ssl.modeling.clip import METHOD, CLIPForSelfSupervisedPretraining, CLIPSSLConfig, clip_contrastive_loss
from ddp_utils import assert_ddp_matches_single, forward_backward, run_ranks, save_rank, shard_forward_backward
from tiny_configs import TINY_CONFIGS, tiny_config
from vl_utils import random_captions


def make_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return CLIPForSelfSupervisedPretraining(tiny_config("clip", **overrides))


def make_batch(n=4, seed=0, length=16, vocab=600):
    g = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(n, 3, 32, 32, generator=g)
    input_ids, mask = random_captions(g, (n,), length, vocab)  # BOS 0, EOS 1, PAD 2
    return {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": mask}


# ----------------------------------------------------------------------------------------------------
# loss and logit scale
# ----------------------------------------------------------------------------------------------------
def _hand_loss(img, txt, scale):
    img = img / np.linalg.norm(img, axis=1, keepdims=True)
    txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    logits = scale * img @ txt.T
    n = len(img)

    def ce(mat):
        return np.mean([-(mat[i, i] - np.log(np.exp(mat[i]).sum())) for i in range(n)])

    return (ce(logits) + ce(logits.T)) / 2


def test_loss_equals_hand_computation_and_is_symmetric():
    rng = np.random.default_rng(0)
    img, txt = rng.normal(size=(6, 8)), rng.normal(size=(6, 8))
    f = lambda a: torch.nn.functional.normalize(torch.tensor(a, dtype=torch.float64), dim=-1)  # noqa: E731
    loss, logits = clip_contrastive_loss(f(img), f(txt), torch.tensor(14.3, dtype=torch.float64))
    assert loss.item() == pytest.approx(_hand_loss(img, txt, 14.3), rel=1e-6)
    swapped, _ = clip_contrastive_loss(f(txt), f(img), torch.tensor(14.3, dtype=torch.float64))
    assert swapped.item() == pytest.approx(loss.item(), rel=1e-6)  # symmetric in the two modalities
    assert logits.shape == (6, 6)
    # a permutation of the pairs (both sides together) leaves the loss unchanged; breaking the pairing raises it
    perm = rng.permutation(6)
    permuted, _ = clip_contrastive_loss(f(img[perm]), f(txt[perm]), torch.tensor(14.3, dtype=torch.float64))
    assert permuted.item() == pytest.approx(loss.item(), rel=1e-6)
    aligned, _ = clip_contrastive_loss(f(img), f(img), torch.tensor(14.3, dtype=torch.float64))
    assert aligned.item() < loss.item()


def test_model_loss_matches_hand_computation():
    model = make_model().eval()
    batch = make_batch()
    out = model(**batch)
    img = model.encode_image(batch["pixel_values"]).detach().double().numpy()
    txt = model.encode_text(batch["input_ids"], batch["attention_mask"]).detach().double().numpy()
    assert out.loss.item() == pytest.approx(_hand_loss(img, txt, 1 / 0.07), rel=1e-4)
    assert out.metrics["logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-5)


def test_logit_scale_init_and_clamp():
    model = make_model()
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07), rel=1e-6)
    assert model.logit_scale.requires_grad
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1000.0))
    assert model.clamped_logit_scale().item() == pytest.approx(100.0, rel=1e-5)
    out = model(**make_batch())
    assert out.metrics["logit_scale"].item() == pytest.approx(100.0, rel=1e-5)
    out.loss.backward()
    assert model.logit_scale.grad.abs().item() == 0.0  # clamped: no gradient pushes it further
    with torch.no_grad():
        model.logit_scale.fill_(math.log(50.0))
    model.zero_grad()
    model(**make_batch()).loss.backward()
    assert model.logit_scale.grad.abs().item() > 0  # below the clamp it learns


def test_gradients_reach_both_towers():
    model = make_model().train()
    model(**make_batch()).loss.backward()
    for module in (model.encoder, model.text_encoder, model.visual_projection, model.text_projection):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


# ----------------------------------------------------------------------------------------------------
# DDP: gathered logits
# ----------------------------------------------------------------------------------------------------
def _ddp_worker(rank, world_size, out_dir):
    model = make_model().eval()  # eval: BatchNorm uses running stats, so the only cross-sample term is the loss
    out, grads = shard_forward_backward(model, make_batch(n=8, seed=1), rank, world_size)
    save_rank(out_dir, rank, loss=out.loss.item(), logits=out.logits, grads=grads)


def test_ddp_gathered_logits_equal_single_process(tmp_path):
    ranks = run_ranks(_ddp_worker, tmp_path)
    model = make_model().eval()
    out = forward_backward(model, make_batch(n=8, seed=1))
    assert_ddp_matches_single(ranks, out.loss, model, atol=1e-5, rtol=1e-4)
    # every process scores its rows against the texts of the whole global batch
    assert ranks[0]["logits"].shape == (4, 8)
    assert torch.allclose(torch.cat([ranks[0]["logits"], ranks[1]["logits"]]), out.logits, atol=1e-4)


# ----------------------------------------------------------------------------------------------------
# tokenizer and data path
# ----------------------------------------------------------------------------------------------------
def test_tokenizer_builds_offline_and_round_trips(tmp_path, monkeypatch):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from hf_ssl.training.text import build_tokenizer

    monkeypatch.setenv("HF_SSL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = build_tokenizer(save_directory=str(tmp_path / "tok"), vocab_size=600, context_length=16)
    assert isinstance(tok, PreTrainedTokenizerFast) and 259 <= len(tok) <= 600
    for text in ["a photo of the digit seven.", "zebra-crossing ü 123 !?"]:
        enc = tok(text)
        ids = enc["input_ids"]
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert tok.decode(ids, skip_special_tokens=True) == text.lower()  # byte-level: any string round-trips
    assert len(tok("a photo of the digit seven.")["input_ids"]) < len("a photo of the digit seven.")  # merges learnt
    padded = tok(["a handwritten one."], padding="max_length", max_length=16, truncation=True)
    assert len(padded["input_ids"][0]) == 16 and padded["input_ids"][0][-1] == tok.pad_token_id
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert reloaded("a photo of the digit seven.")["input_ids"] == tok("a photo of the digit seven.")["input_ids"]
    again = build_tokenizer(vocab_size=600, context_length=16)  # deterministic (cached or retrained)
    assert again.get_vocab() == tok.get_vocab()


def test_view_policy_captions_from_text_or_label():
    from hf_ssl.training.data import build_view_generator
    from PIL import Image

    config = tiny_config("clip")
    policy = build_view_generator(config)
    img = Image.new("RGB", (40, 40), (128, 0, 0))
    rng = np.random.default_rng(0)
    out = policy(img, rng, example={"text": "A red square."})
    assert out["pixel_values"].shape == (3, 32, 32) and out["input_ids"].shape == (16,)
    assert policy.tokenizer.decode(out["input_ids"], skip_special_tokens=True) == "a red square."
    caption = policy.tokenizer.decode(policy(img, rng, example={"label": 7})["input_ids"], skip_special_tokens=True)
    assert "seven" in caption and any(caption == t.format("seven") for t in config.caption_templates)
    assert policy.caption({"captions": ["first", "second"]}, rng) in ("first", "second")


def test_digits_stream_yields_labelled_captions():
    from hf_ssl.training.data import SSLDataCollator, SSLViewDataset, build_view_generator, load_image_stream

    config = tiny_config("clip")
    policy = build_view_generator(config)
    ds = SSLViewDataset(load_image_stream("builtin:digits", split="test", shuffle_buffer=0), policy,
                        with_labels=True)
    examples = [e for _, e in zip(range(6), ds)]
    batch = SSLDataCollator()(examples)
    for ids, label in zip(batch["input_ids"], batch["labels"]):
        assert config.class_names[int(label)] in policy.tokenizer.decode(ids, skip_special_tokens=True)


# ----------------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------------
def test_zero_shot_metric_constructed_case():
    from hf_ssl.metrics import load_metric
    from hf_ssl.metrics._vl import zero_shot_metrics

    classes = np.eye(5, dtype=np.float32)  # 5 orthogonal classes
    images = np.eye(5, dtype=np.float32)[[0, 1, 2, 3, 4, 4, 0, 2]] * 3.0  # scaled: cosine ignores the norm
    labels = [0, 1, 2, 3, 4, 3, 1, 2]  # images 5 and 6 are wrong
    expected = 6 / 8
    got = zero_shot_metrics(images, labels, classes)
    assert got["zero_shot_accuracy"] == pytest.approx(expected)
    assert got["zero_shot_top5"] == pytest.approx(1.0)  # 5 classes: everything is in the top 5
    metric = load_metric("zero_shot_accuracy")
    res = metric.compute(predictions=images.tolist(), references=labels, class_embeddings=classes)
    assert res["zero_shot_accuracy"] == pytest.approx(expected)
    with pytest.raises(ValueError):
        zero_shot_metrics(images, labels, np.eye(4, 5)[:, :4])  # width mismatch


def test_retrieval_recall_constructed_case():
    from hf_ssl.metrics import load_metric
    from hf_ssl.metrics._vl import retrieval_metrics

    rng = np.random.default_rng(0)
    texts = np.linalg.qr(rng.normal(size=(8, 8)))[0].astype(np.float32)  # orthonormal rows
    images = texts.copy()
    # image 0 is closer to text 1 than to its own text 0: rank 2 for image->text
    images[0] = 0.9 * texts[1] + 0.5 * texts[0]
    got = retrieval_metrics(images, texts, k=(1, 2))
    # image->text: image 0 ranks its text second -> R@1 = 7/8, R@2 = 1
    assert got["image_to_text_recall@1"] == pytest.approx(7 / 8)
    assert got["image_to_text_recall@2"] == pytest.approx(1.0)
    # text->image, by hand from the cosine matrix (text 1 still prefers image 1: 0.874 < 1)
    sims = (texts / np.linalg.norm(texts, axis=1, keepdims=True)) @ (
        images / np.linalg.norm(images, axis=1, keepdims=True)).T
    exp_t2i = np.mean([np.sum(sims[i] > sims[i, i]) < 1 for i in range(8)])
    assert got["text_to_image_recall@1"] == pytest.approx(exp_t2i) == pytest.approx(1.0)
    res = load_metric("retrieval_recall").compute(predictions=images.tolist(), references=texts.tolist(), k=[1, 2])
    assert res == pytest.approx(got)
    with pytest.raises(ValueError):
        retrieval_metrics(images, texts[:4])


def test_zero_shot_classifier_prompt_ensemble():
    from hf_ssl.training.text import load_tokenizer

    model = make_model().eval()
    cfg = model.config
    tok = load_tokenizer(None, vocab_size=cfg.tokenizer_vocab_size, context_length=cfg.context_length)
    weights = model.zero_shot_classifier(tok, ["one", "two"], ["a {}.", "the {}!"])
    assert weights.shape == (2, cfg.projection_dim)
    enc = tok(["a one.", "the one!"], padding="max_length", max_length=cfg.context_length, return_tensors="pt")
    manual = torch.nn.functional.normalize(model.get_text_features(enc["input_ids"], enc["attention_mask"]).mean(0),
                                           dim=-1)
    assert torch.allclose(weights[0], manual, atol=1e-6)
    assert torch.allclose(weights.norm(dim=-1), torch.ones(2), atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# config errors, training, save/load
# ----------------------------------------------------------------------------------------------------
def test_bad_inputs_raise():
    base = TINY_CONFIGS["clip"]
    for bad in ({"init_temperature": -0.1}, {"init_temperature": 0.001}, {"max_logit_scale": 0},
                {"caption_templates": ["no placeholder"]}, {"tokenizer_vocab_size": 5000},
                {"text_config": {"model_type": "no_such_text_model"}}):
        with pytest.raises(ValueError):
            CLIPSSLConfig(**{**base, **bad})
    model = make_model()
    batch = make_batch()
    with pytest.raises(ValueError, match="input_ids"):
        model(pixel_values=batch["pixel_values"])
    with pytest.raises(ValueError, match="vocab"):
        model(**{**batch, "input_ids": batch["input_ids"] + 10_000})
    with pytest.raises(ValueError, match="captions"):
        model(**{**batch, "input_ids": batch["input_ids"][:2], "attention_mask": batch["attention_mask"][:2]})


def test_tiny_trainer_run(tmp_path):
    from hf_ssl.training.arguments import SSLTrainingArguments
    from hf_ssl.training.data import SSLViewDataset, build_view_generator, load_image_stream
    from hf_ssl.training.trainer import SSLTrainer

    model = make_model()
    before = model.logit_scale.item()
    ds = SSLViewDataset(load_image_stream("builtin:digits", shuffle_buffer=16), build_view_generator(model.config))
    args = SSLTrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=8,
                                learning_rate=1e-3, logging_steps=1, save_strategy="no", disable_tqdm=True)
    trainer = SSLTrainer(model=model, args=args, train_dataset=ds)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert model.logit_scale.item() != before  # the temperature is learnt


def test_save_load_serialises_text_config(tmp_path):
    from transformers import AutoConfig, AutoModel

    model = make_model().eval()
    model.save_pretrained(tmp_path)
    raw = json.load(open(tmp_path / "config.json"))
    assert raw["text_config"]["model_type"] == "clip_text_model" and raw["text_config"]["hidden_size"] == 16
    cfg = AutoConfig.from_pretrained(tmp_path)
    assert cfg.text_config.hidden_size == 16 and cfg.context_length == 16
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(reloaded) is CLIPForSelfSupervisedPretraining
    batch = make_batch()
    assert torch.allclose(model(**batch).loss, reloaded(**batch).loss, atol=1e-6)
    assert torch.equal(model.get_text_features(batch["input_ids"]), reloaded.get_text_features(batch["input_ids"]))


def test_cpu_demo_preset_builds():
    cfg = METHOD.make_config("cpu-demo")
    assert cfg.image_size == 32 and cfg.augmentation["policy"] == "image_text"
    assert CLIPSSLConfig().text_config.num_hidden_layers == 12  # paper default text transformer
