"""ViLLA: ROI align vs a hand reference, stage-1 loss vs hand reference (both denominators), the epsilon mapping
rule, stage-2 region-text loss vs hand reference, DDP equivalence of both gathered losses, the stage-1 -> parquet ->
stage-2 pipeline, view policy, training and save/load."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hf_ssl  # noqa: F401
from hf_ssl.modeling.villa import (METHOD, ViLLAConfig, ViLLAForSelfSupervisedPretraining, ViLLAMappingConfig,
                                   ViLLAMappingModel, assign_attributes_to_regions, attribute_text_embeddings,
                                   extract_mapping_inputs, find_attributes, fit_mapping_model, grid_boxes,
                                   region_attribute_assignments, region_text_contrastive_loss, roi_align,
                                   villa_mapping_loss, write_region_attribute_assignments)
from ddp_utils import (assert_ddp_matches_single, average_over_processes_, forward_backward, mean_over_ranks, rank_rows,
                       run_ranks, save_rank, shard_forward_backward)
from tiny_configs import TINY_CONFIGS, tiny_config
from train_utils import loss_logs, tiny_training_run
from vl_utils import random_captions


def make_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return ViLLAForSelfSupervisedPretraining(tiny_config("villa", **overrides))


def make_batch(n=4, r=5, seed=0, length=16, vocab=600):
    g = torch.Generator().manual_seed(seed)
    ids, mask = random_captions(g, (n, r), length, vocab)
    boxes = torch.tensor(grid_boxes(32, 32, 2) + [[0.0, 0.0, 32.0, 32.0]]).expand(n, -1, -1).clone()
    valid = torch.ones(n, r, dtype=torch.bool)
    valid[0, 1] = valid[2, 3] = False
    return {"pixel_values": torch.randn(n, 3, 32, 32, generator=g), "region_boxes": boxes, "input_ids": ids,
            "attention_mask": mask, "region_valid": valid}


# ----------------------------------------------------------------------------------------------------
# ROI align
# ----------------------------------------------------------------------------------------------------
def _bilinear(f, y, x):
    h, w = f.shape[-2:]
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return np.zeros(f.shape[0])
    y, x = min(max(y, 0.0), h - 1), min(max(x, 0.0), w - 1)
    y0, x0 = int(math.floor(y)), int(math.floor(x))
    y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * f[:, y0, x0] + (1 - ly) * lx * f[:, y0, x1] + ly * (1 - lx) * f[:, y1, x0]
            + ly * lx * f[:, y1, x1])


def _roi_ref(f, box, size, scale, ratio):
    """torchvision's roi_align(aligned=True) written out point by point."""
    x0, y0, x1, y1 = [v * scale - 0.5 for v in box]
    bw, bh = (x1 - x0) / size, (y1 - y0) / size
    ny = ratio or int(math.ceil((y1 - y0) / size))
    nx = ratio or int(math.ceil((x1 - x0) / size))
    out = np.zeros((f.shape[0], size, size))
    for i in range(size):
        for j in range(size):
            acc = 0
            for a in range(ny):
                for b in range(nx):
                    acc = acc + _bilinear(f, y0 + i * bh + (a + 0.5) * bh / ny, x0 + j * bw + (b + 0.5) * bw / nx)
            out[:, i, j] = acc / (ny * nx)
    return out


def test_roi_align_matches_the_torchvision_rule():
    torch.manual_seed(0)
    feats = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    boxes = torch.tensor([[0.0, 0.0, 28.0, 24.0], [3.3, 5.1, 17.9, 11.2], [-4.0, -2.0, 10.0, 30.0]],
                         dtype=torch.float64)
    index = torch.tensor([0, 1, 1])
    for ratio in (0, 2):
        got = roi_align(feats, boxes, index, 3, 0.25, ratio)
        for k in range(3):
            ref = _roi_ref(feats[index[k]].numpy(), boxes[k].tolist(), 3, 0.25, ratio)
            assert np.allclose(got[k].numpy(), ref, atol=1e-10), (ratio, k)
    # bfloat16 features (a backbone under autocast): box geometry and sampling stay in float32, the result comes back
    # in the features' dtype and equals the float32 pooling of the same values up to the output rounding
    half = feats.float().bfloat16()
    got = roi_align(half, boxes.float(), index, 3, 0.25)
    assert got.dtype == torch.bfloat16
    ref = roi_align(half.float(), boxes.float(), index, 3, 0.25)
    assert torch.allclose(got.float(), ref, rtol=1e-2, atol=1e-2)
    # a constant map pools to the constant, whatever the box
    const = torch.full((1, 2, 4, 4), 3.0)
    assert torch.allclose(roi_align(const, torch.tensor([[1.0, 2.0, 9.0, 13.0]]), torch.tensor([0]), 2, 0.25),
                          torch.full((1, 2, 2, 2), 3.0))


# ----------------------------------------------------------------------------------------------------
# stage 1
# ----------------------------------------------------------------------------------------------------
def _stage1_ref(s, l, official):
    total, count = 0.0, 0
    for a in range(s.shape[1]):
        for i in range(s.shape[0]):
            if not l[i, a]:
                continue
            denom = math.exp(s[i, a]) + sum(math.exp(s[j, a]) for j in range(s.shape[0]) if not l[j, a])
            if official:
                denom += l[:, a].sum()  # exp(0) for every positive image, as released
            total += -math.log(math.exp(s[i, a]) / denom)
            count += 1
    return total / count


def test_mapping_loss_matches_reference_both_denominators():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(5, 4))
    lab = np.array([[1, 0, 1, 0], [0, 0, 1, 0], [1, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]], bool)
    for official in (False, True):
        got = villa_mapping_loss(torch.tensor(s), torch.tensor(lab), official)
        assert got.item() == pytest.approx(_stage1_ref(s, lab, official), rel=1e-6)


def test_mapping_model_scores_are_per_attribute_heads_max_over_regions():
    torch.manual_seed(0)
    cfg = ViLLAMappingConfig(embedding_dim=8, attribute_names=["a", "b", "c"])
    model = ViLLAMappingModel(cfg)
    x = torch.randn(2, 3, 8)
    scores = model.region_attribute_scores(x)
    for a in range(3):
        ref = F.normalize(model.heads[a](x), dim=-1) @ model.attribute_embeddings[a]
        assert torch.allclose(scores[..., a], ref, atol=1e-6)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    out = model(x, labels, mask)
    image = scores.masked_fill(~mask[..., None], -1e9).max(1).values / 0.07  # padded region 2 ignored
    assert out.loss.item() == pytest.approx(villa_mapping_loss(image, labels).item(), rel=1e-6)
    one = ViLLAMappingModel(ViLLAMappingConfig(embedding_dim=8, attribute_names=["a", "b"], one_projection=True))
    assert len(one.heads) == 1 and one.region_attribute_scores(x).shape == (2, 3, 2)
    with pytest.raises(ValueError):
        ViLLAMappingConfig(mapping_temperature=-0.1)
    with pytest.raises(ValueError, match="region_embeds"):
        model(torch.randn(2, 3, 5))


def test_mapping_rule_assigns_every_region_within_epsilon_of_the_best():
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.75, 0.4, 0.2], [0.2, 0.35, 0.95], [0.89, 0.9, 0.0]])
    present = torch.tensor([True, True, False])
    out = assign_attributes_to_regions(scores, present, epsilon=0.2)
    # attribute 0: best 0.9 -> regions >= 0.7: 0, 1, 3; attribute 1: best 0.9 -> >= 0.7: region 3; 2 absent
    assert out == [[0], [0], [], [0, 1]]
    assert assign_attributes_to_regions(scores, present, epsilon=0.0) == [[0], [], [], [1]]  # inclusive max
    # a padded region never gets (or sets the max of) attributes: attribute 1's best is then 0.4 -> regions 1, 2
    valid = torch.tensor([True, True, True, False])
    assert assign_attributes_to_regions(scores, present, 0.2, valid) == [[0], [0, 1], [1], []]


def test_find_attributes_uses_sentence_phrases():
    cap = "The image shows the handwritten digit seven. The strokes are thin. It is placed near the top left."
    assert find_attributes(cap, ["seven", "thin", "thick", "top", "left", "right"]) == ["seven", "thin", "top", "left"]


# ----------------------------------------------------------------------------------------------------
# stage 2
# ----------------------------------------------------------------------------------------------------
def test_region_text_loss_matches_reference_and_ignores_padding():
    torch.manual_seed(0)
    reg = F.normalize(torch.randn(6, 8, dtype=torch.float64), dim=-1)
    txt = F.normalize(torch.randn(6, 8, dtype=torch.float64), dim=-1)
    valid = torch.tensor([1, 1, 0, 1, 1, 0], dtype=torch.bool)
    got, _ = region_text_contrastive_loss(reg, txt, valid, 1 / 0.07, 0.3)
    keep = valid.nonzero().flatten()
    d = reg[keep] @ txt[keep].t() / 0.07
    lab = torch.arange(len(keep))
    ref = (0.3 * F.nll_loss(F.log_softmax(d, 1), lab, reduction="sum")
           + 0.7 * F.nll_loss(F.log_softmax(d, 0).t(), lab, reduction="sum")) / len(keep)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)


def test_model_loss_uses_roi_region_embeddings_and_frozen_parts():
    model = make_model(freeze_text_encoder=True).eval()
    batch = make_batch()
    out = model(**batch)
    regions = model.region_embeddings(batch["pixel_values"], batch["region_boxes"])
    assert regions.shape == (4, 5, 16)
    # ResNet path: ROI-align on the last-but-one stage, then the last stage + pool
    enc = model.encoder
    x = enc.encoder.stages[0](enc.embedder(batch["pixel_values"][:1]))
    roi = roi_align(x, batch["region_boxes"][0, :1], torch.tensor([0]), 4, x.shape[-1] / 32)
    manual = F.normalize(model.visual_projection(enc.pooler(enc.encoder.stages[1](roi)).flatten(1)), dim=-1)
    assert torch.allclose(regions[0, 0], manual[0], atol=1e-5)
    text = model.encode_text(batch["input_ids"].reshape(20, 16), batch["attention_mask"].reshape(20, 16))
    ref, _ = region_text_contrastive_loss(regions.reshape(20, -1), text, batch["region_valid"].reshape(-1),
                                          1 / 0.07, 0.5)
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5)
    model.train()
    model(**batch).loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith(("text_encoder.", "text_projection")))
    assert model.logit_scale.grad is None  # fixed temperature 0.07, as released
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    # a region's embedding depends only on its own box content (ROI pooling), not on other regions
    pix = batch["pixel_values"].clone()
    pix[:, :, 16:, 16:] += 3.0  # bottom-right quadrant changes
    moved = model.eval().region_embeddings(pix, batch["region_boxes"])
    assert not torch.allclose(moved[:, 3], regions[:, 3], atol=1e-4)


# ----------------------------------------------------------------------------------------------------
# DDP
# ----------------------------------------------------------------------------------------------------
def _ddp_worker(rank, world_size, out_dir):
    model = make_model().eval()  # eval: per-process BatchNorm statistics would differ from the global batch's
    out, grads = shard_forward_backward(model, make_batch(n=8, seed=1), rank, world_size)
    torch.manual_seed(3)
    s = torch.randn(8, 5, requires_grad=True)
    lab = torch.rand(8, 5, generator=torch.Generator().manual_seed(4)) > 0.5
    half = rank_rows(8, rank, world_size)
    m = villa_mapping_loss(s[half], lab[half])
    m.backward()
    mapping_grad = average_over_processes_({"s": s.grad.clone()}, world_size)["s"]
    save_rank(out_dir, rank, loss=out.loss.item(), grads=grads, mapping=m.item(), mapping_grad=mapping_grad)


def test_ddp_equals_single_process(tmp_path):
    ranks = run_ranks(_ddp_worker, tmp_path)
    model = make_model().eval()
    out = forward_backward(model, make_batch(n=8, seed=1))
    assert_ddp_matches_single(ranks, out.loss, model, atol=1e-5, rtol=1e-4)
    torch.manual_seed(3)
    s = torch.randn(8, 5, requires_grad=True)
    lab = torch.rand(8, 5, generator=torch.Generator().manual_seed(4)) > 0.5
    m = villa_mapping_loss(s, lab)
    m.backward()
    assert mean_over_ranks(ranks, "mapping") == pytest.approx(m.item(), rel=1e-5)
    assert torch.allclose(ranks[0]["mapping_grad"], s.grad, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# the pipeline, data, config, training, save/load
# ----------------------------------------------------------------------------------------------------
def test_stage1_to_stage2_pipeline(tmp_path):
    from hf_ssl.training.data import SSLDataCollator, SSLViewDataset, build_view_generator, load_image_stream

    region_model = make_model().eval()
    inputs = extract_mapping_inputs(region_model, "builtin:digits", split="test", max_samples=24)
    names = inputs["attribute_names"]
    assert inputs["region_embeds"].shape == (24, 4, 16) and inputs["attribute_labels"].shape == (24, len(names))
    assert (inputs["attribute_labels"].sum(1) >= 3).all()  # class + stroke + slant/position words at least
    mapping = ViLLAMappingModel(ViLLAMappingConfig(embedding_dim=16, attribute_names=names))
    mapping.set_attribute_embeddings(attribute_text_embeddings(region_model, names))
    history = fit_mapping_model(mapping, inputs, steps=30, batch_size=12, learning_rate=1e-2)
    assert np.mean(history[-5:]) < np.mean(history[:5])  # the mapping model learns
    texts = region_attribute_assignments(mapping, inputs)
    # every mentioned attribute is assigned to at least one region, and only sentences of the caption are used
    for row, regions, lab in zip(inputs["examples"], texts, inputs["attribute_labels"]):
        joined = " . ".join(regions)
        for a in np.flatnonzero(lab.numpy()):
            assert any(f" {names[a]}" in " " + s.lower() for s in joined.split(" . ")), names[a]
        sentences = {s.strip() for s in row["text"].split(".") if len(s) > 3}
        assert all(s in sentences for t in regions if t for s in t.split(" . "))
    path = write_region_attribute_assignments(mapping, inputs, str(tmp_path / "villa" / "train.parquet"))
    config = tiny_config("villa")
    ds = SSLViewDataset(load_image_stream(str(tmp_path / "villa"), shuffle_buffer=0), build_view_generator(config))
    examples = [e for _, e in zip(range(4), ds)]
    batch = SSLDataCollator()(examples)
    batch.pop("num_skipped")
    assert batch["input_ids"].shape == (4, 5, 16)
    assert torch.equal(batch["region_valid"][:, :4], torch.tensor([[bool(t) for t in r] for r in texts[:4]]))
    assert torch.isfinite(make_model()(**batch).loss)
    assert path.endswith(".parquet")


def test_view_policy_regions_and_texts():
    from PIL import Image

    from hf_ssl.training.data import build_view_generator

    policy = build_view_generator(tiny_config("villa"))
    rng = np.random.default_rng(0)
    img = Image.new("RGB", (64, 48))
    out = policy(img, rng, example={"text": "A red circle. A blue square.", "regions": [[0, 0, 32, 24], [32, 0, 64, 48]],
                                    "region_texts": ["A red circle", ""]})
    assert out["region_boxes"].tolist() == [[0, 0, 16, 16], [16, 0, 32, 32], [0, 0, 32, 32], [0, 0, 32, 32],
                                            [0, 0, 32, 32]]
    assert out["region_valid"].tolist() == [True, False, False, False, True]
    texts = [policy.tokenizer.decode(x, skip_special_tokens=True) for x in out["input_ids"]]
    assert texts[0] == "a red circle" and texts[-1].startswith("a red circle. a blue")  # context 16
    grid = policy(img, rng, example={"label": 3})
    assert grid["region_valid"].all() and grid["region_boxes"][1].tolist() == [16, 0, 32, 16]
    with pytest.raises(ValueError, match="boxes"):
        policy(img, rng, example={"text": "x", "regions": [[10, 10, 5, 20]]})


def test_bad_configs_and_inputs_raise():
    base = TINY_CONFIGS["villa"]
    for bad in ({"region_temperature": 0}, {"lambda_region_to_text": 1.5}, {"region_source": "boxes"},
                {"region_grid": 3, "max_regions": 4}, {"roi_output_size": 0}, {"init_temperature": -1}):
        with pytest.raises(ValueError):
            ViLLAConfig(**{**base, **bad})
    model = make_model()
    batch = make_batch()
    with pytest.raises(ValueError, match="region_boxes"):
        model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"])
    with pytest.raises(ValueError, match="regions, length"):
        model(**{**batch, "input_ids": batch["input_ids"][:, 0], "attention_mask": None})
    with pytest.raises(ValueError, match="disagree"):
        model(**{**batch, "region_boxes": batch["region_boxes"][:, :3]})
    with pytest.raises(ValueError, match="region_valid"):
        model(**{**batch, "region_valid": batch["region_valid"][:, :2]})
    cfg = ViLLAConfig()
    assert cfg.backbone_config.model_type == "resnet" and cfg.region_temperature == 0.07 and cfg.freeze_text_encoder
    assert ViLLAMappingConfig().epsilon == 0.2 and ViLLAMappingConfig().mapping_temperature == 0.07
    assert METHOD.make_config("cpu-demo").augmentation["policy"] == "villa_regions"


def test_tiny_trainer_run_and_save_load(tmp_path):
    from transformers import AutoModel

    from hf_ssl.training.data import SSLViewDataset, build_view_generator, load_image_stream

    model = make_model()
    ds = SSLViewDataset(load_image_stream("builtin:digits", shuffle_buffer=16), build_view_generator(model.config))
    trainer = tiny_training_run(model, ds, tmp_path / "run", batch_size=8)
    logs = loss_logs(trainer)
    assert len(logs) == 3 and all(np.isfinite(h["loss"]) for h in logs)
    model.eval().save_pretrained(tmp_path / "ckpt")
    reloaded = AutoModel.from_pretrained(tmp_path / "ckpt").eval()
    assert type(reloaded) is ViLLAForSelfSupervisedPretraining
    batch = make_batch()
    assert torch.allclose(model(**batch).loss, reloaded(**batch).loss, atol=1e-6)
    mapping = ViLLAMappingModel(ViLLAMappingConfig(embedding_dim=8, attribute_names=["a", "b"]))
    mapping.save_pretrained(tmp_path / "mapping")
    again = ViLLAMappingModel.from_pretrained(tmp_path / "mapping")
    for k, v in mapping.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
