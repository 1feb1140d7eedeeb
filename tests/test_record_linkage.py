"""Multimodal record linkage (CLIPPINGS): supervised contrastive loss vs a hand loop, pooled record embeddings,
linkage metrics on constructed cases, noisy-record generation, DDP equivalence of the gathered linkage loss,
training, end-to-end linkage evaluation, save/load."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hf_ssl  # noqa: F401
from hf_ssl.modeling.clip import clip_contrastive_loss
from hf_ssl.modeling.record_linkage import (METHOD, RecordLinkageConfig, RecordLinkageForSelfSupervisedPretraining,
                                            corrupt_text, evaluate_linkage, linkage_metrics, record_name,
                                            supervised_contrastive_loss)
from ddp_utils import (assert_ddp_matches_single, forward_backward, mean_over_ranks, run_ranks, save_rank,
                       shard_forward_backward)
from tiny_configs import TINY_CONFIGS, tiny_config
from train_utils import loss_logs, tiny_training_run
from vl_utils import random_captions


def make_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return RecordLinkageForSelfSupervisedPretraining(tiny_config("record_linkage", **overrides))


def make_batch(n=4, seed=0, length=32, vocab=600):
    g = torch.Generator().manual_seed(seed)
    (i1, m1), (i2, m2) = random_captions(g, (n,), length, vocab), random_captions(g, (n,), length, vocab)
    return {"pixel_values": [torch.randn(n, 3, 32, 32, generator=g), torch.randn(n, 3, 32, 32, generator=g)],
            "input_ids": [i1, i2], "attention_mask": [m1, m2]}


def hand_supcon(z, ids, t):
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    s = z @ z.T / t
    losses = []
    for i in range(len(z)):
        others = [a for a in range(len(z)) if a != i]
        pos = [p for p in others if ids[p] == ids[i]]
        if not pos:
            continue
        log_den = np.log(sum(np.exp(s[i, a]) for a in others))
        losses.append(-np.mean([s[i, p] - log_den for p in pos]))
    return float(np.mean(losses))


def test_supervised_contrastive_loss_matches_hand_loop():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(7, 5))
    ids = np.array([0, 1, 0, 2, 1, 0, 3])  # entity 0 has 3 records, entity 3 has no positive (left out)
    t = lambda a: F.normalize(torch.tensor(a, dtype=torch.float64), dim=-1)  # noqa: E731
    loss = supervised_contrastive_loss(t(z), torch.tensor(ids), temperature=0.1)
    assert loss.item() == pytest.approx(hand_supcon(z, ids, 0.1), rel=1e-9)
    # two observations per entity and no other positives: SupCon is NT-Xent
    from hf_ssl.modeling.losses import nt_xent

    z1, z2 = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    both = t(np.concatenate([z1, z2]))
    sup = supervised_contrastive_loss(both, torch.arange(4).repeat(2), temperature=0.2)
    assert sup.item() == pytest.approx(nt_xent(t(z1), t(z2), 0.2).item(), rel=1e-9)


def test_linkage_metrics_constructed_case():
    # 3 query records, 4 reference records; entity 9 has no counterpart among the references
    q = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    r = np.array([[1.0, 0.1], [0.1, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    qid, rid = [0, 1, 9], [0, 1, 0, 5]
    m = linkage_metrics(q, r, qid, rid, threshold=0.9, k=(1, 2))
    sims = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (r / np.linalg.norm(r, axis=1, keepdims=True)).T
    pred = sims >= 0.9
    true = np.array(qid)[:, None] == np.array(rid)[None, :]
    tp = (pred & true).sum()
    assert m["pairwise_precision"] == pytest.approx(tp / pred.sum())
    assert m["pairwise_recall"] == pytest.approx(tp / true.sum())
    p, rc = tp / pred.sum(), tp / true.sum()
    assert m["pairwise_f1"] == pytest.approx(2 * p * rc / (p + rc))
    # nearest neighbour: query 0 -> ref 2 (exact match, entity 0) correct; query 1 -> ref 1 correct; query 2 has no
    # true reference and is not counted
    assert m["recall@1"] == pytest.approx(1.0) and m["recall@2"] == pytest.approx(1.0)
    assert m["best_f1"] >= m["pairwise_f1"]
    # brute-force best F1 over thresholds
    best = max(2 * (true & (sims >= th)).sum() / ((sims >= th).sum() + true.sum()) for th in sims.flatten())
    assert m["best_f1"] == pytest.approx(best)
    with pytest.raises(ValueError):
        linkage_metrics(q, r, qid, rid[:2])
    with pytest.raises(ValueError):
        linkage_metrics(q, r, qid, rid, threshold=2.0)


def test_noisy_records():
    from PIL import Image

    rng = np.random.default_rng(0)
    text = "name: Karomi Tase ; ink: 30% ; a photo of the digit seven."
    assert corrupt_text(text, rng, 0.0) == text
    noisy = [corrupt_text(text, np.random.default_rng(s), 0.1) for s in range(20)]
    assert sum(n != text for n in noisy) >= 18 and len(set(noisy)) > 10
    assert all(abs(len(n) - len(text)) <= 0.3 * len(text) for n in noisy)
    assert corrupt_text(text, np.random.default_rng(3), 0.1) == corrupt_text(text, np.random.default_rng(3), 0.1)
    a = Image.fromarray(np.random.default_rng(1).integers(0, 255, (8, 8), dtype=np.uint8)).convert("RGB")
    b = Image.fromarray(np.random.default_rng(2).integers(0, 255, (8, 8), dtype=np.uint8)).convert("RGB")
    assert record_name(a) == record_name(a.copy()) and record_name(a) != record_name(b)


def test_view_policy_gives_two_observations_of_one_record():
    from hf_ssl.training.data import build_view_generator, decode_image, load_image_stream

    config = tiny_config("record_linkage")
    policy = build_view_generator(config)
    example = next(iter(load_image_stream("builtin:digits", split="test", shuffle_buffer=0)))
    img = decode_image(example["image"])
    out = policy(img, np.random.default_rng(0), example=example)
    assert len(out["pixel_values"]) == 2 and len(out["input_ids"]) == 2 and out["input_ids"][0].shape == (32,)
    texts = [policy.tokenizer.decode(ids, skip_special_tokens=True) for ids in out["input_ids"]]
    assert texts[0] != texts[1]  # independent noise
    clean = policy.record_text(img, example, np.random.default_rng(0)).lower()
    assert clean.startswith("name: ") and "ink: " in clean and config.class_names[example["label"]] in clean
    out = policy(img, np.random.default_rng(0), example={**example, "entity_id": 17})
    assert out["entity_ids"] == 17


def test_model_loss_is_alignment_plus_supcon_on_pooled_records():
    model = make_model(linkage_weight=2.0, alignment_weight=0.5).eval()
    batch = make_batch()
    out = model(**batch)
    scale = model.clamped_logit_scale()
    records, align = [], 0.0
    for x, ids, mask in zip(batch["pixel_values"], batch["input_ids"], batch["attention_mask"]):
        img, txt = model.encode_image(x), model.encode_text(ids, mask)
        rec = model.get_record_features(x, ids, mask)
        assert torch.allclose(rec, F.normalize((img + txt) / 2, dim=-1), atol=1e-6)  # z = (f + g) / 2
        records.append(rec)
        align = align + clip_contrastive_loss(img, txt, scale)[0] / 2
    sup = hand_supcon(torch.cat(records).double().numpy(), np.tile(np.arange(4), 2), 0.1)
    assert out.loss.item() == pytest.approx(0.5 * align.item() + 2.0 * sup, rel=1e-4)
    # explicit entity ids: rows 0 and 1 are one entity
    ent = model.eval()(**batch, entity_ids=torch.tensor([5, 5, 6, 7]))
    sup2 = hand_supcon(torch.cat(records).double().numpy(), np.tile([5, 5, 6, 7], 2), 0.1)
    assert ent.metrics["linkage_loss"].item() == pytest.approx(sup2, rel=1e-4)
    model.train()
    model(**batch).loss.backward()
    for module in (model.encoder, model.text_encoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def _ddp_worker(rank, world_size, out_dir):
    out, grads = shard_forward_backward(make_model().eval(), make_batch(n=8, seed=1), rank, world_size)
    save_rank(out_dir, rank, loss=out.loss.item(), link=out.metrics["linkage_loss"].item(), grads=grads)


def test_ddp_gathered_linkage_loss_equals_single_process(tmp_path):
    ranks = run_ranks(_ddp_worker, tmp_path)
    model = make_model().eval()
    out = forward_backward(model, make_batch(n=8, seed=1))
    # DDP rows are ordered [rank0 obs1, rank0 obs2, rank1 obs1, rank1 obs2], the single process [obs1, obs2]: the
    # loss is a mean over anchors, so the order does not matter
    assert mean_over_ranks(ranks, "link") == pytest.approx(out.metrics["linkage_loss"].item(), rel=1e-5)
    assert_ddp_matches_single(ranks, out.loss, model, atol=1e-5, rtol=1e-3)


def test_bad_config_and_inputs_raise():
    base = TINY_CONFIGS["record_linkage"]
    for bad in ({"linkage_temperature": 0.0}, {"typo_rate": 1.0}, {"typo_rate": -0.1}, {"image_weight": 1.5},
                {"linkage_weight": -1.0}, {"linkage_weight": 0.0, "alignment_weight": 0.0},
                {"record_fields": ["name", "address"]}, {"record_fields": []}, {"link_threshold": 1.5}):
        with pytest.raises(ValueError):
            RecordLinkageConfig(**{**base, **bad})
    model = make_model()
    batch = make_batch()
    with pytest.raises(ValueError, match="input_ids"):
        model(pixel_values=batch["pixel_values"])
    with pytest.raises(ValueError, match="observation"):
        model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"][:1],
              attention_mask=batch["attention_mask"][:1])
    with pytest.raises(ValueError, match="two observations"):
        model(pixel_values=batch["pixel_values"][0], input_ids=batch["input_ids"][0],
              attention_mask=batch["attention_mask"][0])
    with pytest.raises(ValueError, match="entity_ids"):
        model(**batch, entity_ids=torch.tensor([1, 2]))


def test_tiny_training_and_linkage_evaluation(tmp_path):
    from hf_ssl.training.data import SSLViewDataset, build_view_generator, load_image_stream

    model = make_model()
    ds = SSLViewDataset(load_image_stream("builtin:digits", shuffle_buffer=16), build_view_generator(model.config))
    trainer = tiny_training_run(model, ds, tmp_path, batch_size=8)
    logs = loss_logs(trainer)
    assert len(logs) == 3 and all(np.isfinite(h["loss"]) for h in logs) and "linkage_loss" in logs[-1]
    res = evaluate_linkage(model, max_samples=24)
    for prefix in ("", "image_only_", "text_only_"):
        assert 0 <= res[f"{prefix}recall@1"] <= res[f"{prefix}recall@5"] <= 1
        assert 0 <= res[f"{prefix}pairwise_f1"] <= res[f"{prefix}best_f1"] <= 1
    again = evaluate_linkage(model, max_samples=24)
    assert again == res  # deterministic protocol (fixed seed)


def test_save_load_round_trip(tmp_path):
    from transformers import AutoModel

    model = make_model().eval()
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(reloaded) is RecordLinkageForSelfSupervisedPretraining
    batch = make_batch()
    assert torch.allclose(model(**batch).loss, reloaded(**batch).loss, atol=1e-6)


def test_defaults_and_demo_preset():
    cfg = RecordLinkageConfig()
    assert cfg.image_weight == 0.5 and cfg.linkage_temperature == 0.1 and cfg.backbone_config.patch_size == 32
    demo = METHOD.make_config("cpu-demo")
    assert demo.augmentation["policy"] == "record_pair" and demo.context_length == 48
