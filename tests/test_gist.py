"""GIST: top-k matching by CLIP similarity, caption formatting / sampling, texts from the data column reaching the
tokenizer, loss = the CLIP core's, from_clip_pretrained, evaluation, tiny training run and save/load."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hf_ssl  # noqa: F401
from hf_ssl.modeling.clip import CLIPForSelfSupervisedPretraining, CLIPSSLConfig, clip_contrastive_loss
from hf_ssl.modeling.gist import (METHOD, GISTConfig, GISTForSelfSupervisedPretraining, format_caption,
                                  match_by_attributes, match_texts_topk)
from hf_ssl.modeling.gist.views_gist import GISTTextPolicy, digit_attributes
from hf_ssl.training.data import SSLDataCollator, SSLViewDataset, build_view_generator, load_image_stream
from tiny_configs import TINY_CONFIGS, tiny_config


def make_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return GISTForSelfSupervisedPretraining(tiny_config("gist", **overrides))


# ----------------------------------------------------------------------------------------------------
# matching
# ----------------------------------------------------------------------------------------------------
def test_topk_matching_on_constructed_example():
    # 2 images, 4 candidate texts at known angles: image 0 is closest to texts 2, 0, 3 (in that order)
    texts = F.normalize(torch.tensor([[1.0, 0.2, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.0, 1.0]]), dim=-1)
    images = F.normalize(torch.tensor([[1.0, 0.0, 0.1], [0.0, 1.0, 0.05]]), dim=-1)
    idx, prob = match_texts_topk(images, texts, k=3, logit_scale=100.0)
    sims = images @ texts.t()
    expected = torch.argsort(sims, dim=1, descending=True)[:, :3]
    assert torch.equal(idx, expected) and idx[0].tolist() == [2, 0, 3] and idx[1, 0].item() == 1
    # probabilities = the official softmax(100 * cos) over ALL candidates of the class, read at the top-k
    full = (100.0 * sims).softmax(-1)
    assert torch.allclose(prob, full.gather(1, idx), atol=1e-6)
    assert (prob[:, :-1] >= prob[:, 1:]).all()  # best first
    # the scale changes the probabilities but not the ranking
    idx2, prob2 = match_texts_topk(images, texts, k=3, logit_scale=1.0)
    assert torch.equal(idx2, idx) and not torch.allclose(prob2, prob)


def test_per_image_candidates_and_padding_mask():
    # per-image pools [B, T, D]: a padded candidate that would win is never selected
    pools = F.normalize(torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(0)), dim=-1)
    images = F.normalize(torch.randn(2, 4, generator=torch.Generator().manual_seed(1)), dim=-1)
    pools[0, 4] = images[0]  # a perfect match ...
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[0, 4] = False  # ... that is padding
    idx, prob = match_texts_topk(images, pools, k=2, text_mask=mask)
    assert 4 not in idx[0].tolist()
    idx_nomask, _ = match_texts_topk(images, pools, k=1)
    assert idx_nomask[0, 0].item() == 4
    with pytest.raises(ValueError, match="k must be"):
        match_texts_topk(images, pools, k=5, text_mask=mask)
    with pytest.raises(ValueError, match="text_embeds"):
        match_texts_topk(images, pools[:1], k=1)


def test_match_captions_uses_model_similarity():
    model = make_model().eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cands = [["a small one.", "a thin one.", "a photo of the digit one.", "one at the top."],
             ["a two.", "two slanted left.", "a wide two."],
             ["three.", "a three with thick strokes.", "a centered three."]]
    out = model.match_captions(x, cands, k=2)
    from hf_ssl.training.text import load_tokenizer

    cfg = model.config
    tok = load_tokenizer(None, vocab_size=cfg.tokenizer_vocab_size, context_length=cfg.context_length)
    with torch.no_grad():
        img = model.encode_image(x)
        for i, texts in enumerate(cands):
            emb = model.encode_text(*model._tokenize(tok, texts))
            sims = img[i] @ emb.t()
            best = torch.argsort(sims, descending=True)[:2].tolist()
            assert [t for t, _ in out[i]] == [texts[j] for j in best]
            p = (cfg.match_logit_scale * sims).softmax(-1)
            assert out[i][0][1] == pytest.approx(p[best[0]].item(), rel=1e-5)
    assert model.training is False
    with pytest.raises(ValueError, match="candidate"):
        model.match_captions(x, cands[:2])


def test_builtin_texts_are_image_specific():
    from PIL import Image

    # a thin digit at the top left vs a thick one centered: their matched texts differ and describe them
    a = np.zeros((32, 32), np.uint8)
    a[2:14, 4:6] = 255  # thin vertical stroke, top left, tall
    b = np.zeros((32, 32), np.uint8)
    b[8:24, 8:24] = 255  # big centered block
    ia, ib = Image.fromarray(a).convert("RGB"), Image.fromarray(b).convert("RGB")
    ta, tb = match_by_attributes(ia, "one", k=5), match_by_attributes(ib, "one", k=5)
    assert len(ta) == 5 and ta != tb
    assert digit_attributes(ia)["position"] == "top left" and "top left" in ta[0] and "tall" in ta[0]
    assert "centered" in tb[0]
    # the best text agrees with all measured attributes, later ones with fewer
    assert ta[0].startswith("a one with")


# ----------------------------------------------------------------------------------------------------
# captions: formatting, sampling, the data column reaching the tokenizer
# ----------------------------------------------------------------------------------------------------
def test_caption_format():
    assert format_caption("{class_name}: {text}", "seven", " a seven, slanted left ") == "seven: a seven, slanted left"
    assert format_caption("{class_name}: {text}", "seven", "Seven: already prefixed") == "Seven: already prefixed"
    assert format_caption("{class_name}: {text}", None, "no class") == "no class"
    for bad in ({"caption_format": "no text"}, {"caption_format": "{text} {other}"}, {"num_captions": 6},
                {"num_captions": 0}, {"match_logit_scale": 0.0}, {"match_top_k": -1}):
        with pytest.raises(ValueError):
            GISTConfig(**{**TINY_CONFIGS["gist"], **bad})


def test_caption_sampling_uses_the_best_num_captions():
    policy = GISTTextPolicy(tiny_config("gist", num_captions=2))
    example = {"label": 7, "gist_texts": ["best", "second", "third", "fourth"]}
    rng = np.random.default_rng(0)
    drawn = [policy.sample_caption(example, rng) for _ in range(200)]
    assert set(drawn) == {"seven: best", "seven: second"}  # only the top num_captions, with the class prefix
    counts = np.array([drawn.count("seven: best"), drawn.count("seven: second")])
    assert counts.min() > 70  # uniform among them
    # class-name column beats the label; a user column name is honoured; no texts -> CLIP core fallback
    assert policy.sample_caption({"label": 7, "species": "Boeing 707", "gist_texts": ["x"]}, rng) == "Boeing 707: x"
    custom = GISTTextPolicy(tiny_config("gist", text_column="descriptions"))
    assert custom.sample_caption({"label": 1, "descriptions": ["thin"], "gist_texts": ["no"]}, rng) == "one: thin"
    fallback = policy.sample_caption({"label": 3}, rng)
    assert "three" in fallback and ":" not in fallback


def test_texts_from_the_data_column_reach_the_tokenizer(tmp_path):
    from PIL import Image

    root = tmp_path / "data" / "train"
    rows = []
    for label in (0, 1):
        (root / str(label)).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((32, 32, 3), 40 * i + label * 100, np.uint8)).save(root / str(label) / f"{i}.png")
            rows.append({"file_name": f"{label}/{i}.png", "label": label,
                         "gist_texts": [f"a zebra number {label} {i}"]})
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    config = tiny_config("gist")
    policy = build_view_generator(config)
    seen = []
    original = policy.tokenize

    def spy(texts):
        seen.extend(texts)
        return original(texts)

    policy.tokenize = spy
    examples = list(SSLViewDataset(load_image_stream(str(tmp_path / "data"), shuffle_buffer=0), policy))
    names = config.class_names
    expected = {f"{names[r['label']]}: {r['gist_texts'][0]}" for r in rows}
    assert set(seen) == expected
    decoded = {policy.tokenizer.decode(e["input_ids"], skip_special_tokens=True) for e in examples}
    assert decoded == {t.lower() for t in expected}  # the BPE lowercases like CLIP
    batch = SSLDataCollator()(examples)
    assert batch["input_ids"].shape == (6, config.context_length)


# ----------------------------------------------------------------------------------------------------
# loss, from_clip_pretrained, training, save/load
# ----------------------------------------------------------------------------------------------------
def _digits_batch(config, n=6):
    ds = SSLViewDataset(load_image_stream(METHOD.default_dataset, split="test", shuffle_buffer=0),
                        build_view_generator(config))
    examples = [e for _, e in zip(range(n), ds)]
    batch = SSLDataCollator()(examples)
    batch.pop("num_skipped")
    return batch


def test_loss_equals_clip_core_and_hand_computation():
    model = make_model().eval()
    batch = _digits_batch(model.config)
    out = model(**batch)
    clip_cfg = {k: getattr(model.config, k) for k in ("backbone_config", "text_config", "image_size",
                                                      "projection_dim", "tokenizer_vocab_size")}
    clip = CLIPForSelfSupervisedPretraining(CLIPSSLConfig(**clip_cfg)).eval()
    clip.load_state_dict(model.state_dict())
    assert torch.allclose(out.loss, clip(**batch).loss, atol=1e-6)
    with torch.no_grad():
        img = model.encode_image(batch["pixel_values"])
        txt = model.encode_text(batch["input_ids"], batch["attention_mask"])
        logits = model.clamped_logit_scale() * img @ txt.t()
        y = torch.arange(len(img))
        hand = (F.cross_entropy(logits, y) + F.cross_entropy(logits.t(), y)) / 2
        core, _ = clip_contrastive_loss(img, txt, model.clamped_logit_scale())
    assert out.loss.item() == pytest.approx(hand.item(), rel=1e-5) == pytest.approx(core.item(), rel=1e-5)


def test_from_clip_pretrained_copies_all_weights(tmp_path):
    torch.manual_seed(1)
    clip = CLIPForSelfSupervisedPretraining(tiny_config("clip", text_config=dict(
        TINY_CONFIGS["gist"]["text_config"]))).eval()
    clip.save_pretrained(tmp_path / "clip")
    model = GISTForSelfSupervisedPretraining.from_clip_pretrained(str(tmp_path / "clip"), num_captions=2).eval()
    assert model.config.num_captions == 2 and model.config.model_type == "hf_ssl_gist"
    for k, v in clip.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    from hf_ssl.modeling.swav import SwAVForSelfSupervisedPretraining

    SwAVForSelfSupervisedPretraining(tiny_config("swav")).save_pretrained(tmp_path / "swav")
    with pytest.raises(ValueError, match="not an hf_ssl CLIP"):
        GISTForSelfSupervisedPretraining.from_clip_pretrained(str(tmp_path / "swav"))


def test_bad_inputs_raise():
    model = make_model()
    batch = _digits_batch(model.config, n=2)
    with pytest.raises(ValueError, match="input_ids"):
        model(pixel_values=batch["pixel_values"])
    with pytest.raises(ValueError, match="captions"):
        model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"][:1])
    with pytest.raises(ValueError, match="channels"):
        model(pixel_values=torch.randn(2, 4, 32, 32), input_ids=batch["input_ids"])


def test_tiny_trainer_run_and_save_load(tmp_path):
    from transformers import AutoModel

    from hf_ssl.modeling.gist import gist_evaluate
    from hf_ssl.training.arguments import SSLTrainingArguments
    from hf_ssl.training.trainer import SSLTrainer

    model = make_model()
    ds = SSLViewDataset(load_image_stream(METHOD.default_dataset, shuffle_buffer=16), build_view_generator(model.config))
    args = SSLTrainingArguments(output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=8,
                                learning_rate=1e-3, logging_steps=1, save_strategy="no", disable_tqdm=True)
    before = model.logit_scale.item()
    SSLTrainer(model=model, args=args, train_dataset=ds).train()
    assert model.logit_scale.item() != before
    model.eval().save_pretrained(tmp_path / "gist")
    reloaded = AutoModel.from_pretrained(tmp_path / "gist").eval()
    assert type(reloaded) is GISTForSelfSupervisedPretraining and reloaded.config.num_captions == 4
    batch = _digits_batch(model.config, n=4)
    assert torch.allclose(model(**batch).loss, reloaded(**batch).loss, atol=1e-6)
    metrics = gist_evaluate(reloaded)  # the whole (class-sorted) train / test splits
    assert 0.0 <= metrics["zero_shot_accuracy"] <= 1.0 and 0.0 <= metrics["linear_probe_accuracy"] <= 1.0


def test_paper_defaults_and_demo_preset():
    cfg = GISTConfig()
    assert cfg.image_size == 336 and cfg.backbone_config.patch_size == 14 and cfg.backbone_config.hidden_size == 1024
    assert cfg.text_config.hidden_size == 768 and cfg.projection_dim == 768
    assert (cfg.num_captions, cfg.match_top_k, cfg.match_logit_scale) == (4, 5, 100.0)
    assert cfg.augmentation["crop_scale"] == [0.08, 1.0] and cfg.augmentation["horizontal_flip"] == 0.5
    demo = METHOD.make_config("cpu-demo")
    assert demo.augmentation["policy"] == "gist_text" and METHOD.default_dataset == "builtin:digits_gist"


# ----------------------------------------------------------------------------------------------------
# DDP: the image-specific texts of every process are negatives for every image (gathered logits)
# ----------------------------------------------------------------------------------------------------
def _ddp_worker(rank, world_size, out_dir):
    from ddp_utils import save_rank, shard_forward_backward

    model = make_model().eval()  # eval: BatchNorm uses running stats, so the only cross-sample term is the loss
    batch = torch.load(f"{out_dir}/batch.pt")  # built by the parent: a stream in a worker is sharded by rank
    out, grads = shard_forward_backward(model, batch, rank, world_size)
    save_rank(out_dir, rank, loss=out.loss.item(), grads=grads)


def test_ddp_two_processes_match_single_process(tmp_path):
    from ddp_utils import assert_ddp_matches_single, forward_backward, run_ranks

    model = make_model().eval()
    batch = _digits_batch(model.config, n=8)
    torch.save(batch, tmp_path / "batch.pt")
    ranks = run_ranks(_ddp_worker, tmp_path)
    out = forward_backward(model, batch)
    assert_ddp_matches_single(ranks, out.loss, model, atol=1e-5, rtol=1e-4)
