"""Heuristic multi-task pre-training (Qian, arXiv:2310.07510): heads contribute only when their inputs exist, task
weights are applied exactly, every head's gradient reaches the shared backbone, views carry labels, DDP equivalence
(gathered negatives and globally normalised supervised losses)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import hf_ssl  # noqa: F401
from hf_ssl.modeling.backbones import encode
from hf_ssl.modeling.heuristic_mtl import (METHOD, HeuristicMTLConfig, HeuristicMTLForSelfSupervisedPretraining,
                                           HeuristicMTLImageProcessor)
from hf_ssl.modeling.losses import nt_xent
from hf_ssl.training.data import SSLDataCollator, build_view_generator
from ddp_utils import (assert_grads_close, average_over_processes_, mean_over_ranks, parameter_grads, rank_rows,
                       run_ranks, save_rank)
from train_utils import tiny_training_run

TINY_VIT = dict(model_type="vit", hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                patch_size=8)
TINY_RESNET = dict(model_type="resnet", layer_type="basic", depths=[1, 1], hidden_sizes=[8, 16], embedding_size=8)
C = 5


def make_model(**kw):
    base = dict(backbone_config=TINY_VIT, image_size=32, mask_patch_size=8, num_classes=C, projection_hidden_dim=32,
                projection_dim=16, projection_batch_norm=False)
    base.update(kw)
    torch.manual_seed(0)
    return HeuristicMTLForSelfSupervisedPretraining(HeuristicMTLConfig(**base)).train()


def batch(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(b, 3, 32, 32, generator=g), torch.randn(b, 3, 32, 32, generator=g)]
    mask = torch.zeros(b, 16, dtype=torch.bool)
    for i in range(b):
        mask[i, torch.randperm(16, generator=g)[:10]] = True
    return views, mask


def terms_by_hand(m, views, mask, labels=None, loss="bce"):
    """Each task's loss recomputed from the model's pieces."""
    h1, h2 = encode(m.encoder, views[0], "cls"), encode(m.encoder, views[1], "cls")
    out = {"contrastive": nt_xent(m.projector(h1), m.projector(h2), m.config.contrastive_temperature)}
    out["mim"] = m.mim_loss(views[0], mask)
    if labels is not None:
        valid = labels >= 0
        per = 0
        for h in (h1, h2):
            logits = m.classifier(h)[valid]
            if loss == "bce":
                per = per + F.binary_cross_entropy_with_logits(logits, F.one_hot(labels[valid], C).float(),
                                                               reduction="none").mean(1)
            else:
                per = per + F.cross_entropy(logits, labels[valid], reduction="none")
        out["classification"] = (per / 2).mean()
    return out


def test_config_validation():
    base = dict(backbone_config=TINY_VIT, image_size=32, mask_patch_size=8)
    for bad in (dict(contrastive_weight=-1), dict(mask_ratio=1.0), dict(mask_ratio=0.0),
                dict(classification_loss="mse"),
                dict(contrastive_temperature=-0.1), dict(num_classes=0), dict(num_segmentation_classes=-1),
                dict(mask_patch_size=12), dict(contrastive_weight=0, mim_weight=0, classification_weight=0,
                                               segmentation_weight=0)):
        with pytest.raises(ValueError):
            HeuristicMTLConfig(**{**base, **bad})
    with pytest.raises(ValueError, match="mim_weight=0"):
        HeuristicMTLConfig(backbone_config=TINY_RESNET, image_size=32)
    cfg = HeuristicMTLConfig(backbone_config=TINY_RESNET, image_size=32, mim_weight=0.0)  # ConvNets without MIM
    m = HeuristicMTLForSelfSupervisedPretraining(cfg)
    assert m.mim_decoder is None
    views, _ = batch()
    assert torch.isfinite(m(pixel_values=views, labels=torch.tensor([0, 1, -1, 2])).loss)
    default = HeuristicMTLConfig()
    assert default.backbone_config.model_type == "swin" and default.backbone_config.embed_dim == 128
    assert default.classification_loss == "bce" and default.mask_ratio == 0.6 and default.mask_patch_size == 32


def test_bad_inputs_are_clear_errors():
    m = make_model()
    views, mask = batch()
    with pytest.raises(ValueError, match="2 views"):
        m(pixel_values=views + views)
    with pytest.raises(ValueError, match="bool_masked_pos"):
        m(pixel_values=views, bool_masked_pos=mask[:, :5])
    with pytest.raises(ValueError, match="one entry per image"):
        m(pixel_values=views, labels=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="num_classes"):
        m(pixel_values=views, labels=torch.tensor([1, 2, 3, C]))
    with pytest.raises(ValueError, match="segmentation"):
        m(pixel_values=views, segmentation_labels=torch.zeros(4, 32, 32, dtype=torch.long))
    with pytest.raises(ValueError, match="channels"):
        m(pixel_values=[views[0][:, :1], views[1]])


def test_each_head_contributes_only_when_its_inputs_exist():
    m = make_model()
    views, mask = batch()
    labels = torch.tensor([1, -1, 3, -1])
    full = m(pixel_values=views, bool_masked_pos=mask, labels=labels)
    ref = terms_by_hand(m, views, mask, labels)
    assert full.loss.item() == pytest.approx(sum(v.item() for v in ref.values()), rel=1e-5)
    for name in ("contrastive", "mim", "classification"):
        assert full.metrics[f"{name}_active"].item() == 1.0
        assert full.metrics[f"{name}_loss"].item() == pytest.approx(ref[name].item(), rel=1e-5)
    assert full.metrics["segmentation_active"].item() == 0.0
    assert full.metrics["labeled_fraction"].item() == pytest.approx(0.5)
    # no labels / only unlabeled images: exactly the self-supervised loss
    for lab in (None, torch.full((4,), -1)):
        out = m(pixel_values=views, bool_masked_pos=mask, labels=lab)
        assert out.metrics["classification_active"].item() == 0.0
        assert out.loss.item() == pytest.approx((ref["contrastive"] + ref["mim"]).item(), rel=1e-5)
    # no mask: no MIM term
    out = m(pixel_values=views, labels=labels)
    assert out.metrics["mim_active"].item() == 0.0
    assert out.loss.item() == pytest.approx((ref["contrastive"] + ref["classification"]).item(), rel=1e-5)
    # unlabeled rows carry no classification gradient: changing their (ignored) label value changes nothing
    a = m(pixel_values=views, labels=torch.tensor([1, -1, 3, -1])).loss
    b = m(pixel_values=views, labels=torch.tensor([1, -5, 3, -2])).loss
    assert a.item() == pytest.approx(b.item())


def test_task_weights_are_applied_exactly():
    views, mask = batch(seed=2)
    labels = torch.tensor([0, 4, 2, -1])
    weights = dict(contrastive_weight=0.3, mim_weight=2.0, classification_weight=0.7)
    m = make_model(**weights)
    out = m(pixel_values=views, bool_masked_pos=mask, labels=labels)
    ref = terms_by_hand(m, views, mask, labels)
    expected = 0.3 * ref["contrastive"] + 2.0 * ref["mim"] + 0.7 * ref["classification"]
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # a weight of 0 removes the task
    m0 = make_model(classification_weight=0.0)
    out0 = m0(pixel_values=views, bool_masked_pos=mask, labels=labels)
    assert out0.metrics["classification_active"].item() == 0.0
    assert out0.loss.item() == pytest.approx((ref["contrastive"] + ref["mim"]).item(), rel=1e-5)
    # single-label CE variant
    mce = make_model(classification_loss="ce")
    ref_ce = terms_by_hand(mce, views, mask, labels, loss="ce")
    out_ce = mce(pixel_values=views, labels=labels)
    assert out_ce.metrics["classification_loss"].item() == pytest.approx(ref_ce["classification"].item(), rel=1e-5)


def _encoder_grad(m):
    return sum(p.grad.abs().sum() for p in m.encoder.parameters() if p.grad is not None)


@pytest.mark.parametrize("task", ["contrastive", "mim", "classification", "segmentation"])
def test_every_head_sends_gradient_to_the_shared_backbone(task):
    weights = {f"{t}_weight": float(t == task) for t in ("contrastive", "mim", "classification", "segmentation")}
    m = make_model(num_segmentation_classes=3, **weights)
    views, mask = batch()
    seg = torch.randint(-1, 3, (4, 32, 32), generator=torch.Generator().manual_seed(0))
    out = m(pixel_values=views, bool_masked_pos=mask, labels=torch.tensor([0, 1, 2, 3]), segmentation_labels=seg)
    assert out.metrics[f"{task}_active"].item() == 1.0
    out.loss.backward()
    assert _encoder_grad(m) > 0
    heads = {"contrastive": m.projector, "mim": m.mim_decoder, "classification": m.classifier,
             "segmentation": m.segmentation_head}
    for name, head in heads.items():
        if head is None:  # mim_weight = 0 builds no MIM head
            assert name == "mim" and task != "mim"
            continue
        g = sum(p.grad.abs().sum() for p in head.parameters() if p.grad is not None)
        assert (g > 0) == (name == task), name  # only the active head learns; the others get exactly zero


def test_skipped_heads_get_zero_not_missing_gradients():
    m = make_model(num_segmentation_classes=3)
    views, _ = batch()
    m(pixel_values=views).loss.backward()  # no mask, no labels, no dense labels: contrastive only
    for head in (m.mim_decoder, m.classifier, m.segmentation_head):
        for p in head.parameters():
            assert p.grad is not None and torch.all(p.grad == 0)
    assert _encoder_grad(m) > 0


def test_segmentation_head_loss_over_labeled_pixels():
    m = make_model(num_segmentation_classes=3, contrastive_weight=0.0, mim_weight=0.0, classification_weight=0.0)
    views, _ = batch()
    seg = torch.full((4, 32, 32), -1, dtype=torch.long)
    seg[0, :10] = 2
    seg[2, 5:] = 1
    out = m(pixel_values=views, segmentation_labels=seg)
    from hf_ssl.modeling.backbones import encoder_feature_map
    logits = F.interpolate(m.segmentation_head(encoder_feature_map(m.encoder, views[0])), size=(32, 32),
                           mode="bilinear", align_corners=False)
    expected = F.cross_entropy(logits, seg, ignore_index=-1)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    empty = m(pixel_values=views, segmentation_labels=torch.full((4, 32, 32), -1))
    assert empty.metrics["segmentation_active"].item() == 0.0 and empty.loss.item() == 0.0


def test_multi_hot_labels():
    m = make_model(contrastive_weight=0.0, mim_weight=0.0)
    views, _ = batch()
    target = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 0, 1], [-1, -1, -1, -1, -1], [0, 1, 1, 1, 0]]).float()
    out = m(pixel_values=views, labels=target)
    h = [encode(m.encoder, v, "cls") for v in views]
    keep = torch.tensor([0, 1, 3])
    per = sum(F.binary_cross_entropy_with_logits(m.classifier(x)[keep], target[keep], reduction="none").mean(1)
              for x in h) / 2
    assert out.loss.item() == pytest.approx(per.mean().item(), rel=1e-5)
    with pytest.raises(ValueError, match="bce"):
        make_model(classification_loss="ce")(pixel_values=views, labels=target)


def test_view_policy_passes_labels_and_masks():
    cfg = METHOD.make_config("cpu-demo")
    policy = build_view_generator(cfg)
    assert policy.wants_example
    img = Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype("uint8"))
    rng = np.random.default_rng(1)
    a = policy(img, rng, example={"image": None, "label": 7})
    assert len(a["pixel_values"]) == 2 and a["pixel_values"][0].shape == (3, 32, 32) and a["labels"] == 7
    grid = cfg.patch_grid()
    assert a["bool_masked_pos"].shape == (grid[0] * grid[1],)
    assert a["bool_masked_pos"].float().mean().item() == pytest.approx(0.625)  # ceil(16 cells * 0.6) = 10 of 16
    b = policy(img, rng)  # no example / no label
    assert b["labels"] == -1
    c = policy(img, rng, example={"labels": [1, 3]})
    assert torch.equal(c["labels"], F.one_hot(torch.tensor([1, 3]), 10).sum(0).float())
    batch_ = SSLDataCollator()([dict(a, num_skipped=0), dict(b, num_skipped=0)])
    assert torch.equal(batch_["labels"], torch.tensor([7, -1]))
    with pytest.raises(ValueError, match="out of range"):
        policy(img, rng, example={"label": 10})


def test_tiny_trainer_run_uses_dataset_labels(tmp_path):
    from hf_ssl.training.data import SSLViewDataset, load_image_stream

    model = make_model(num_classes=10, projection_batch_norm=True)
    before = model.classifier.weight.detach().clone()
    ds = SSLViewDataset(load_image_stream("builtin:digits", shuffle_buffer=32), build_view_generator(model.config))
    trainer = tiny_training_run(model, ds, tmp_path, batch_size=8)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and all(np.isfinite(h["loss"]) for h in logged)
    assert all(h["classification_active"] == 1.0 and h["mim_active"] == 1.0 for h in logged)
    assert not torch.equal(before, model.classifier.weight)


def test_save_load_round_trip(tmp_path):
    from transformers import AutoModel

    model = make_model(num_segmentation_classes=2).eval()
    model.save_pretrained(tmp_path)
    HeuristicMTLImageProcessor.from_ssl_config(model.config).save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(reloaded) is HeuristicMTLForSelfSupervisedPretraining
    views, mask = batch()
    labels = torch.tensor([0, 1, -1, 3])
    with torch.no_grad():
        assert torch.allclose(model(pixel_values=views, bool_masked_pos=mask, labels=labels).loss,
                              reloaded(pixel_values=views, bool_masked_pos=mask, labels=labels).loss)
    assert reloaded.config.num_segmentation_classes == 2 and reloaded.config.num_classes == C


# -- DDP: 2 processes on half batches == 1 process on the full batch ---------------------------------------------
DDP_B = 8
DDP_LABELS = torch.tensor([0, 3, -1, 1, -1, -1, -1, 2])  # 3 labeled images on rank 0, 1 on rank 1


def _ddp_step(rows):
    m = make_model(num_segmentation_classes=2)
    views, mask = batch(DDP_B, seed=5)
    seg = torch.randint(-1, 2, (DDP_B, 32, 32), generator=torch.Generator().manual_seed(1))
    seg[4:] = -1
    seg[4, 0, :3] = 1  # rank 1 has only 3 labeled pixels
    out = m(pixel_values=[v[rows] for v in views], bool_masked_pos=mask[rows], labels=DDP_LABELS[rows],
            segmentation_labels=seg[rows])
    m.zero_grad()
    out.loss.backward()
    grads = parameter_grads(m)
    return out.loss.detach(), {k: v.detach() for k, v in out.metrics.items()}, grads


def _ddp_worker(rank, world_size, out_dir):
    torch.set_num_threads(1)
    loss, metrics, grads = _ddp_step(rank_rows(DDP_B, rank, world_size))
    save_rank(out_dir, rank, loss=loss, metrics=metrics, grads=average_over_processes_(grads, world_size))


def test_ddp_equivalence(tmp_path):
    ranks = run_ranks(_ddp_worker, tmp_path)
    loss, metrics, grads = _ddp_step(slice(None))
    assert torch.allclose(mean_over_ranks(ranks, "loss"), loss, atol=1e-5)
    rank_metrics = mean_over_ranks(ranks, "metrics")
    for key in ("classification_loss", "segmentation_loss", "contrastive_loss", "mim_loss"):
        assert torch.allclose(rank_metrics[key], metrics[key], atol=1e-5), key
    assert ranks[0]["metrics"]["labeled_fraction"].item() == pytest.approx(metrics["labeled_fraction"].item())
    assert_grads_close(ranks[0]["grads"], grads, atol=1e-5, rtol=1e-4, same_keys=True)
