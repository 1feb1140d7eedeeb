"""SPRC-style composed image retrieval: loss terms vs hand computation, stop-gradient of the alignment target,
frozen image encoder, prompt splicing, triplet views, DDP-gathered negatives, recall@k, training, loading."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hf_ssl  # noqa: F401
from hf_ssl.modeling.composed_retrieval import (METHOD, ComposedRetrievalConfig,
                                                ComposedRetrievalForSelfSupervisedPretraining,
                                                composed_contrastive_loss, composed_recall_at_k,
                                                composed_retrieval_evaluate)
from ddp_utils import assert_ddp_matches_single, forward_backward, run_ranks, save_rank, shard_forward_backward
from tiny_configs import TINY_CONFIGS, tiny_config
from train_utils import loss_logs, tiny_training_run
from vl_utils import random_captions


def make_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return ComposedRetrievalForSelfSupervisedPretraining(tiny_config("composed_retrieval", **overrides))


def make_batch(n=4, seed=0, length=24, vocab=600):
    g = torch.Generator().manual_seed(seed)
    ids, mask = random_captions(g, (n,), length, vocab, min_length=4)
    return {"pixel_values": torch.randn(n, 3, 32, 32, generator=g),
            "target_pixel_values": torch.randn(n, 3, 32, 32, generator=g), "input_ids": ids, "attention_mask": mask}


def _ce_rows(logits):
    return np.mean([-(logits[i, i] - np.log(np.exp(logits[i]).sum())) for i in range(len(logits))])


# ----------------------------------------------------------------------------------------------------
# losses
# ----------------------------------------------------------------------------------------------------
def test_contrastive_loss_equals_hand_computation():
    rng = np.random.default_rng(0)
    q, t = rng.normal(size=(5, 6)), rng.normal(size=(5, 6))
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    tn = t / np.linalg.norm(t, axis=1, keepdims=True)
    scale = torch.tensor(10.0, dtype=torch.float64)
    loss, logits = composed_contrastive_loss(torch.tensor(qn), torch.tensor(tn), scale)
    assert loss.item() == pytest.approx(_ce_rows(10.0 * qn @ tn.T), rel=1e-6)
    assert logits.shape == (5, 5)
    # one-directional (query -> target), unlike CLIP's symmetric loss
    swapped, _ = composed_contrastive_loss(torch.tensor(tn), torch.tensor(qn), scale)
    assert swapped.item() == pytest.approx(_ce_rows(10.0 * tn @ qn.T), rel=1e-6)


def test_model_loss_is_itc_plus_weighted_rtc_and_alignment():
    model = make_model().eval()
    batch = make_batch()
    out = model(**batch)
    with torch.no_grad():
        q, prompt = model.compose(batch["pixel_values"], batch["input_ids"], batch["attention_mask"],
                                  return_prompt=True)
        t = model.encode_image(batch["target_pixel_values"])
        r = model.text_only_query(batch["input_ids"], batch["attention_mask"])
    s = 1 / 0.07
    itc = _ce_rows(s * q.double().numpy() @ t.double().numpy().T)
    rtc = _ce_rows(s * r.double().numpy() @ t.double().numpy().T)
    align = ((prompt.mean(1) - model.prompt_tokens.mean(1)) ** 2).mean().item()
    assert out.metrics["loss_itc"].item() == pytest.approx(itc, rel=1e-4)
    assert out.metrics["loss_rtc"].item() == pytest.approx(rtc, rel=1e-4)
    assert out.metrics["loss_align"].item() == pytest.approx(align, rel=1e-4)
    assert out.loss.item() == pytest.approx(itc + 0.4 * rtc + 0.4 * align, rel=1e-4)


def test_alignment_target_is_stop_gradient_and_rtc_trains_the_learnable_prompt():
    model = make_model(rtc_loss_weight=0.0).train()
    model(**make_batch()).loss.backward()
    # without loss_rtc the learnable prompt appears only as the (detached) alignment target
    assert model.prompt_tokens.grad is None or model.prompt_tokens.grad.abs().sum() == 0
    assert model.prompt_generator.queries.grad.abs().sum() > 0
    model = make_model().train()
    model(**make_batch()).loss.backward()
    assert model.prompt_tokens.grad.abs().sum() > 0


def test_image_encoder_frozen_by_default_projection_trains():
    model = make_model(freeze_image_encoder=True).train()
    model(**make_batch()).loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in model.encoder.parameters())
    for module in (model.visual_projection, model.text_encoder, model.text_projection, model.prompt_generator):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert ComposedRetrievalConfig().freeze_image_encoder  # paper default (BLIP-2 freeze_vit)


# ----------------------------------------------------------------------------------------------------
# the composed query
# ----------------------------------------------------------------------------------------------------
def test_composed_query_uses_the_reference_and_the_caption_text_only_branch_does_not():
    from hf_ssl.modeling.prompting import encode_text_with_prompts

    model = make_model().eval()
    b = make_batch()
    with torch.no_grad():
        q = model.compose(b["pixel_values"], b["input_ids"], b["attention_mask"])
        prompt = model.sentence_prompt(b["pixel_values"], b["input_ids"], b["attention_mask"])
        spliced = F.normalize(model.text_projection(encode_text_with_prompts(
            model.text_encoder, b["input_ids"], b["attention_mask"], prompt)), dim=-1)
        assert torch.allclose(q, spliced, atol=1e-6)
        assert prompt.shape == (4, 4, 16)
        other_ref = model.compose(b["pixel_values"].flip(0), b["input_ids"], b["attention_mask"])
        assert not torch.allclose(q, other_ref, atol=1e-4)  # the reference image matters
        # padding after the end token changes nothing (masked in the generator, after EOS in the text encoder)
        ids = b["input_ids"].clone()
        ids[b["attention_mask"] == 0] = 57
        assert torch.allclose(model.compose(b["pixel_values"], ids, b["attention_mask"]), q, atol=1e-5)
        r = model.text_only_query(b["input_ids"], b["attention_mask"])
        assert torch.allclose(q.norm(dim=-1), torch.ones(4), atol=1e-5) and not torch.allclose(r, q, atol=1e-3)


# ----------------------------------------------------------------------------------------------------
# triplet views
# ----------------------------------------------------------------------------------------------------
def test_geometric_and_class_edit_triplets():
    from hf_ssl.training.data import build_view_generator
    from PIL import Image

    config = tiny_config("composed_retrieval", augmentation={"crop_scale": [1.0, 1.0]})
    policy = build_view_generator(config)
    arr = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    policy.geometric = ["rotate180"]
    out = policy(img, np.random.default_rng(1))
    assert policy.tokenizer.decode(out["input_ids"], skip_special_tokens=True) == "turn it upside down."
    assert torch.allclose(out["target_pixel_values"], out["pixel_values"].flip(1).flip(2), atol=1e-5)
    # class edits: the caption names the target's class
    policy = build_view_generator(tiny_config("composed_retrieval", augmentation={"edit_kinds": ["class"]}))
    rng = np.random.default_rng(0)
    seven = Image.new("RGB", (32, 32), (200, 200, 200))
    policy(seven, rng, example={"label": 7})
    out = policy(img, rng, example={"label": 3})
    caption = policy.tokenizer.decode(out["input_ids"], skip_special_tokens=True)
    assert "seven" in caption and any(caption == t.format("seven") for t in config.relative_caption_templates)
    assert out["target_pixel_values"].std(dim=(1, 2)).max() < 1e-4  # the uniform grey "seven"
    # triplet data: the caption column and the target column are used as they are
    target = Image.new("RGB", (32, 32), (0, 0, 0))
    out = policy(img, rng, example={"relative_caption": "make it dark."}, pair=target)
    assert policy.tokenizer.decode(out["input_ids"], skip_special_tokens=True) == "make it dark."


# ----------------------------------------------------------------------------------------------------
# DDP
# ----------------------------------------------------------------------------------------------------
def _ddp_worker(rank, world_size, out_dir):
    out, grads = shard_forward_backward(make_model().eval(), make_batch(n=8, seed=1), rank, world_size)
    save_rank(out_dir, rank, loss=out.loss.item(), logits=out.logits, grads=grads)


def test_ddp_gathered_negatives_equal_single_process(tmp_path):
    ranks = run_ranks(_ddp_worker, tmp_path)
    model = make_model().eval()
    out = forward_backward(model, make_batch(n=8, seed=1))
    assert_ddp_matches_single(ranks, out.loss, model, atol=1e-5, rtol=1e-4)
    assert ranks[0]["logits"].shape == (4, 8)  # every query scored against all 8 targets
    assert torch.allclose(torch.cat([ranks[0]["logits"], ranks[1]["logits"]]), out.logits, atol=1e-4)


# ----------------------------------------------------------------------------------------------------
# metrics, training, loading, errors
# ----------------------------------------------------------------------------------------------------
def test_recall_at_k_hand_case():
    gallery = torch.eye(4)
    query = torch.tensor([[1.0, 0, 0, 0], [0.9, 0.5, 0, 0], [0, 0, 0.2, 1.0], [0, 0, 0, 1.0]])
    target = torch.tensor([0, 1, 2, 3])
    got = composed_recall_at_k(query, gallery, target, k=(1, 2))
    # query 1 ranks its target 2nd, query 2 ranks it 2nd
    assert got == {"recall@1": 0.5, "recall@2": 1.0}
    same = torch.zeros(4, 4, dtype=torch.bool)
    same[1, 0] = True  # gallery item 0 is a copy of query 1's target
    assert composed_recall_at_k(query, gallery, target, k=(1,), same_as_target=same)["recall@1"] == 0.75
    with pytest.raises(ValueError):
        composed_recall_at_k(query, gallery, torch.tensor([0, 1, 2, 9]))


def test_tiny_trainer_run_and_evaluation(tmp_path):
    from hf_ssl.training.data import SSLViewDataset, build_view_generator, load_image_stream

    model = make_model()
    ds = SSLViewDataset(load_image_stream("builtin:digits", shuffle_buffer=16), build_view_generator(model.config))
    trainer = tiny_training_run(model, ds, tmp_path, max_steps=4, batch_size=8)
    logs = loss_logs(trainer)
    assert len(logs) == 4 and all(np.isfinite(h["loss"]) and "loss_align" in h for h in logs)
    res = composed_retrieval_evaluate(model, split="test", max_samples=40)
    assert set(res) == {f"{b}_recall@{k}" for b in ("composed", "text_only") for k in (1, 5, 10)}
    assert all(0.0 <= v <= 1.0 for v in res.values())
    assert res["composed_recall@1"] <= res["composed_recall@5"] <= res["composed_recall@10"]


def test_overfitting_a_batch_retrieves_the_targets():
    model = make_model(seed=2).train()
    batch = make_batch(n=8, seed=3)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = model(**batch).metrics["loss_itc"].item()
    for _ in range(30):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    out = model.eval()(**batch)
    assert out.metrics["loss_itc"].item() < 0.3 * first
    assert out.metrics["recall@1_in_batch"].item() == 1.0


def test_from_clip_pretrained_and_save_load(tmp_path):
    from hf_ssl.modeling.clip import CLIPForSelfSupervisedPretraining

    torch.manual_seed(0)
    clip_cfg = dict(TINY_CONFIGS["clip"])
    clip_cfg["text_config"] = dict(clip_cfg["text_config"], max_position_embeddings=32)
    clip = CLIPForSelfSupervisedPretraining(hf_ssl.modeling.clip.CLIPSSLConfig(**clip_cfg))
    clip.save_pretrained(tmp_path / "clip")
    model = ComposedRetrievalForSelfSupervisedPretraining.from_clip_pretrained(
        str(tmp_path / "clip"), num_prompt_tokens=4, caption_length=24, prompt_generator_heads=2)
    for key, value in clip.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert not any(p.requires_grad for p in model.encoder.parameters())  # paper default: frozen image encoder
    model.save_pretrained(tmp_path / "cir")
    again = ComposedRetrievalForSelfSupervisedPretraining.from_pretrained(tmp_path / "cir").eval()
    b = make_batch()
    assert torch.allclose(again(**b).loss, model.eval()(**b).loss, atol=1e-6)


def test_bad_inputs_and_configs_raise():
    base = TINY_CONFIGS["composed_retrieval"]
    for bad in ({"init_temperature": -0.1}, {"num_prompt_tokens": 10}, {"prompt_generator_heads": 3},
                {"rtc_loss_weight": -1.0}, {"relative_caption_templates": ["no slot"]},
                {"augmentation": {"edit_kinds": ["colour"]}}):
        with pytest.raises(ValueError):
            ComposedRetrievalConfig(**{**base, **bad})
    model = make_model()
    b = make_batch()
    with pytest.raises(ValueError, match="target_pixel_values"):
        model(pixel_values=b["pixel_values"], input_ids=b["input_ids"])
    with pytest.raises(ValueError, match="caption"):
        model(**{**b, "input_ids": None})
    with pytest.raises(ValueError, match="vocab"):
        model(**{**b, "input_ids": b["input_ids"] + 1000})
    with pytest.raises(ValueError, match="targets"):
        model(**{**b, "target_pixel_values": b["target_pixel_values"][:2]})


def test_cpu_demo_preset_builds():
    cfg = METHOD.make_config("cpu-demo")
    assert cfg.augmentation["policy"] == "composed_triplet" and cfg.num_prompt_tokens + cfg.caption_length <= 32
    paper = ComposedRetrievalConfig()
    assert (paper.num_prompt_tokens, paper.caption_length, paper.rtc_loss_weight, paper.align_loss_weight) == (
        32, 32, 0.4, 0.4)
