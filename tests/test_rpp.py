"""Rethinking Positive Pairs (SimLAP) invariants on tiny CPU models: the pair-conditioned gate, the gated
multi-positive InfoNCE, the arbitrary-pair view policy, DDP equivalence, training and save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import hf_ssl  # noqa: F401  (registers the Auto classes)
from hf_ssl.modeling.rpp import METHOD, RPPConfig, RPPForSelfSupervisedPretraining, RPPImageProcessor
from hf_ssl.modeling.rpp.modeling_rpp import pair_contrastive_loss
from hf_ssl.modeling.rpp.views_rpp import image_content_id
from hf_ssl.training.data import build_view_generator
from ddp_utils import assert_ddp_matches_single, parameter_grads, rank_rows, run_ranks, save_rank

TINY_RESNET = dict(model_type="resnet", layer_type="basic", depths=[1, 1], hidden_sizes=[8, 16], embedding_size=8)
D = 16


def make_config(**kwargs):
    kwargs.setdefault("backbone_config", dict(TINY_RESNET))
    kwargs.setdefault("image_size", 32)
    kwargs.setdefault("projection_hidden_dim", 32)
    kwargs.setdefault("projection_dim", D)
    kwargs.setdefault("gate_hidden_dim", 16)
    return RPPConfig(**kwargs)


def make_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return RPPForSelfSupervisedPretraining(make_config(**kwargs))


def make_views(batch=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 32, 32, generator=g) for _ in range(2)]


def unit(n, d=D, seed=0):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def _image(seed, size=36):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8))


# ----------------------------------------------------------------------------------------------------
# 1. the pair-conditioned feature filter
# ----------------------------------------------------------------------------------------------------
def test_gate_in_unit_interval_symmetric_and_stop_gradient():
    model = make_model().eval()
    feats = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(1)) * 3
    ha, hp = feats[0].requires_grad_(True), feats[1].requires_grad_(True)
    gate = model.pair_gate(ha, hp)
    assert gate.shape == (6, D) and (gate > 0).all() and (gate < 1).all()
    assert torch.allclose(gate, model.pair_gate(hp, ha), atol=1e-6)  # symmetric in the pair
    assert not torch.allclose(gate[0], gate[1])  # conditioned on the pair
    gate.sum().backward()
    assert ha.grad is None and hp.grad is None  # the features condition the gate without gradient
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.gate.parameters())


def test_label_gate_depends_only_on_the_class_pair_and_is_symmetric():
    model = make_model(gate_condition="labels", num_classes=5, gate_embedding_dim=8).eval()
    labels = torch.tensor([[0, 3], [3, 0], [1, 1], [0, 3]])
    gate = model.pair_gate(pair_labels=labels)
    assert (gate > 0).all() and (gate < 1).all()
    assert torch.allclose(gate[0], gate[1]) and torch.allclose(gate[0], gate[3])
    assert not torch.allclose(gate[0], gate[2])
    with pytest.raises(ValueError, match="pair_labels"):
        model.pair_gate(torch.randn(4, 16), torch.randn(4, 16))


# ----------------------------------------------------------------------------------------------------
# 2. the gated multi-positive InfoNCE
# ----------------------------------------------------------------------------------------------------
def test_open_gate_and_same_image_pairs_is_plain_infonce():
    za, zp = unit(6, seed=1), unit(6, seed=2)
    ids = torch.arange(6)
    loss, logits = pair_contrastive_loss(za, zp, torch.ones(6, D), ids, ids, ids, 0.1)
    assert float(loss) == pytest.approx(float(F.cross_entropy(za @ zp.t() / 0.1, ids)), rel=1e-5)
    assert torch.allclose(logits, za @ zp.t() / 0.1, atol=1e-6)


def test_gate_restricts_the_comparison_to_open_dimensions():
    za, zp = unit(5, seed=3), unit(5, seed=4)
    gate = torch.zeros(5, D)
    gate[:, :4] = 1.0
    ids = torch.arange(5)
    loss1, _ = pair_contrastive_loss(za, zp, gate, ids, ids, ids, 0.1)
    zp2 = zp.clone()
    zp2[:, 4:] = torch.randn(5, D - 4)  # closed dimensions change arbitrarily
    za2 = za.clone()
    za2[:, 4:] = torch.randn(5, D - 4)
    loss2, _ = pair_contrastive_loss(za2, zp2, gate, ids, ids, ids, 0.1)
    assert float(loss1) == pytest.approx(float(loss2), rel=1e-6)
    # the logits weight each dimension by gate^2
    g = torch.rand(5, D)
    _, logits = pair_contrastive_loss(za, zp, g, ids, ids, ids, 0.5)
    assert torch.allclose(logits, (za * g * g) @ zp.t() / 0.5, atol=1e-6)


def test_arbitrary_pair_masks_positives_excluded_and_negatives():
    # rows: anchor image a_b with partner p_b; candidates show the partner images p_j
    anchors = torch.tensor([10, 11, 12, 13])
    partners = torch.tensor([20, 20, 10, 21])  # rows 0, 1 share a partner; row 2's partner is row 0's anchor
    za, zp = unit(4, seed=5), unit(4, seed=6)
    gate = torch.rand(4, D, generator=torch.Generator().manual_seed(7))
    loss, logits = pair_contrastive_loss(za, zp, gate, anchors, partners, partners, 0.1)
    expected = []
    for b in range(4):
        pos = [j for j in range(4) if partners[j] == partners[b]]
        neg = [j for j in range(4) if partners[j] not in (anchors[b], partners[b])]
        terms = [float(-logits[b, j] + torch.logsumexp(torch.cat([logits[b, [j]], logits[b, neg]]), 0))
                 for j in pos]
        expected.append(np.mean(terms))
    assert float(loss) == pytest.approx(float(np.mean(expected)), rel=1e-5)
    # candidate 2 shows row 0's own anchor image: excluded for row 0, so changing it leaves row 0's loss unchanged
    zp_changed = zp.clone()
    zp_changed[2] = unit(1, seed=9)[0]
    row0 = lambda c: pair_contrastive_loss(za[:1], c, gate[:1], anchors[:1], partners[:1], partners, 0.1)[0]  # noqa
    assert float(row0(zp)) == pytest.approx(float(row0(zp_changed)), rel=1e-6)
    # permuting the candidates does not change the loss
    perm = torch.tensor([3, 1, 0, 2])
    loss_p, _ = pair_contrastive_loss(za, zp[perm], gate, anchors, partners, partners[perm], 0.1)
    assert float(loss_p) == pytest.approx(float(loss), rel=1e-6)
    with pytest.raises(ValueError, match="partner"):
        pair_contrastive_loss(za, zp, gate, anchors, partners, torch.tensor([1, 2, 3, 4]), 0.1)


def test_loss_small_when_pairs_match_in_gated_subspace_and_large_otherwise():
    za = unit(6, seed=11)
    ids = torch.arange(6)
    good, _ = pair_contrastive_loss(za, za.clone(), torch.ones(6, D), ids, ids, ids, 0.05)
    bad, _ = pair_contrastive_loss(za, -za, torch.ones(6, D), ids, ids, ids, 0.05)
    assert float(good) < 0.5 < 5.0 < float(bad)


# ----------------------------------------------------------------------------------------------------
# 3. the model forward
# ----------------------------------------------------------------------------------------------------
def test_forward_matches_loss_on_its_own_projections_and_metrics():
    model = make_model().eval()
    views = make_views()
    pair_ids = torch.tensor([[1, 2], [2, 1], [3, 3], [4, 2], [5, 6], [6, 7]])
    out = model(pixel_values=views, pair_ids=pair_ids)
    with torch.no_grad():
        h = model.encoder(pixel_values=torch.cat(views)).pooler_output.flatten(1)
        z = F.normalize(model.projection_head(h), dim=1)
        gate = model.pair_gate(h[:6], h[6:])
        expected, _ = pair_contrastive_loss(z[:6], z[6:], gate, pair_ids[:, 0], pair_ids[:, 1], pair_ids[:, 1],
                                            model.config.rpp_temperature)
    assert float(out.loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    assert float(out.metrics["arbitrary_pairs"]) == pytest.approx(5 / 6)
    assert 0 < float(out.metrics["gate_activation"]) < D
    assert all(not v.requires_grad for v in out.metrics.values())
    assert out.logits.shape == (6, 6) and not out.embeddings.requires_grad
    # without pair_ids both views are taken as the same image (classical positives)
    plain = model(pixel_values=views)
    same = model(pixel_values=views, pair_ids=torch.arange(6).repeat(2, 1).t())
    assert torch.equal(plain.loss, same.loss)


def test_gate_penalty_adds_mean_bernoulli_entropy():
    views = make_views()
    base = make_model().eval()(pixel_values=views)
    pen = make_model(gate_penalty_weight=0.5).eval()(pixel_values=views)
    expected = base.loss + 0.5 * base.metrics["gate_entropy"]
    assert float(pen.loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)


def test_labels_mode_uses_class_pairs():
    model = make_model(gate_condition="labels", num_classes=4, gate_embedding_dim=8).train()
    labels = torch.tensor([[0, 1], [1, 2], [2, 0], [3, 1], [0, 2], [1, 3]])
    out = model(pixel_values=make_views(), pair_labels=labels)
    out.loss.backward()
    assert model.label_embedding.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    with pytest.raises(ValueError, match="pair_labels"):
        model(pixel_values=make_views())
    with pytest.raises(ValueError, match="num_classes"):
        model(pixel_values=make_views(), pair_labels=labels + 3)


def test_training_step_reaches_encoder_and_few_steps_reduce_loss():
    model = make_model().train()
    views = make_views(batch=8, seed=3)
    ids = torch.tensor([[i, (i + 3) % 8] for i in range(8)])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        out = model(pixel_values=views, pair_ids=ids)
        opt.zero_grad()
        out.loss.backward()
        if not losses:
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
        opt.step()
        losses.append(float(out.loss.detach()))
    assert losses[-1] < losses[0]


def test_bad_inputs_and_configs_raise_clearly():
    model = make_model()
    with pytest.raises(ValueError, match="anchor views, partner views"):
        model(pixel_values=make_views() + make_views())
    with pytest.raises(ValueError, match="pair_ids"):
        model(pixel_values=make_views(), pair_ids=torch.zeros(6, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="channels"):
        model(pixel_values=[torch.randn(6, 4, 32, 32)] * 2)
    with pytest.raises(ValueError, match="same shape"):
        model(pixel_values=[torch.randn(6, 3, 32, 32), torch.randn(5, 3, 32, 32)])
    for kwargs, match in [({"rpp_temperature": -0.1}, "rpp_temperature"), ({"gate_condition": "x"}, "gate_condition"),
                          ({"gate_penalty_weight": -1.0}, "gate_penalty_weight"), ({"num_classes": 0}, "num_classes"),
                          ({"augmentation": {"arbitrary_pair_prob": 1.5}}, "arbitrary_pair_prob"),
                          ({"augmentation": {"pair_buffer_size": 0}}, "pair_buffer_size")]:
        with pytest.raises(ValueError, match=match):
            make_config(**kwargs)
    assert model(pixel_values=torch.randn(2, 3, 32, 32)).loss is None


# ----------------------------------------------------------------------------------------------------
# 4. the arbitrary-pair view policy
# ----------------------------------------------------------------------------------------------------
def test_view_policy_pairs_arbitrary_recent_images_with_content_ids():
    policy = build_view_generator(make_config(augmentation={"pair_buffer_size": 3}))
    rng = np.random.default_rng(0)
    images = [_image(s) for s in range(6)]
    ids = [image_content_id(im) for im in images]
    assert ids[0] == image_content_id(_image(0)) and len(set(ids)) == 6  # content ids: stable and distinct
    outs = [policy(im, rng) for im in images]
    assert outs[0]["pair_ids"].tolist() == [ids[0], ids[0]]  # nothing seen yet: the image itself
    for i, out in enumerate(outs[1:], start=1):
        a, p = out["pair_ids"].tolist()
        assert a == ids[i] and p != a and p in ids[max(0, i - 3):i]  # a different image among the 3 most recent
        assert [tuple(v.shape) for v in out["pixel_values"]] == [(3, 32, 32)] * 2
    assert len(policy.buffer) == 3
    assert policy.partner_view.solarize == 0.2 and policy.anchor_view.solarize == 0.0
    # probability 0: classical same-image pairs only
    same = build_view_generator(make_config(augmentation={"arbitrary_pair_prob": 0.0}))
    for s in range(4):
        a, p = same(_image(s), rng)["pair_ids"].tolist()
        assert a == p
    # deterministic for a given generator
    p1, p2 = (build_view_generator(make_config()) for _ in range(2))
    r1, r2 = np.random.default_rng(5), np.random.default_rng(5)
    for im in images:
        o1, o2 = p1(im, r1), p2(im, r2)
        assert torch.equal(o1["pair_ids"], o2["pair_ids"]) and torch.equal(o1["pixel_values"][1], o2["pixel_values"][1])


# ----------------------------------------------------------------------------------------------------
# 5. DDP equivalence: partner embeddings (positives and negatives) are gathered across processes; eval-mode
#    BatchNorm so that every sample's projection and gate are batch independent.
# ----------------------------------------------------------------------------------------------------
DDP_BATCH = 8
# a partner shared across the two halves (id 20), an anchor of rank 0 that is a partner on rank 1 (id 1)
DDP_IDS = torch.tensor([[0, 20], [1, 21], [2, 2], [3, 22], [4, 20], [5, 1], [6, 23], [7, 7]])


def _loss_and_grads(model, rows):
    model.zero_grad()
    out = model(pixel_values=[v[rows] for v in make_views(DDP_BATCH, seed=13)], pair_ids=DDP_IDS[rows])
    out.loss.backward()
    return float(out.loss.detach()), parameter_grads(model)


def _ddp_worker(rank, world_size, out_dir):
    torch.set_num_threads(1)
    loss, grads = _loss_and_grads(make_model().eval(), rank_rows(DDP_BATCH, rank, world_size))
    save_rank(out_dir, rank, loss=loss, grads=grads)


def test_ddp_two_processes_match_single_process(tmp_path):
    ranks = run_ranks(_ddp_worker, tmp_path)
    loss, grads = _loss_and_grads(make_model().eval(), slice(None))
    # DDP averages the per-process gradients
    assert_ddp_matches_single(ranks, loss, grads, atol=1e-6, rtol=1e-5, grads_averaged=False, same_keys=True)


# ----------------------------------------------------------------------------------------------------
# 6. trainer run, save / load, presets
# ----------------------------------------------------------------------------------------------------
def test_tiny_trainer_run(tmp_path):
    from hf_ssl.training.arguments import SSLTrainingArguments
    from hf_ssl.training.data import SSLViewDataset, load_image_stream
    from hf_ssl.training.trainer import SSLTrainer

    model = make_model(augmentation={"pair_buffer_size": 8})
    ds = SSLViewDataset(load_image_stream("builtin:digits", shuffle_buffer=32), build_view_generator(model.config))
    args = SSLTrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=8,
                                save_strategy="no", logging_steps=1, disable_tqdm=True, learning_rate=1e-3)
    trainer = SSLTrainer(model=model, args=args, train_dataset=ds)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and all(np.isfinite(h["loss"]) for h in logged)
    assert logged[-1]["arbitrary_pairs"] > 0.5  # the policy delivered pairs of different images


def test_save_load_round_trip(tmp_path):
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    model = make_model(rpp_temperature=0.2).eval()
    model.save_pretrained(tmp_path)
    RPPImageProcessor.from_ssl_config(model.config).save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path)
    assert type(reloaded) is RPPForSelfSupervisedPretraining
    views, ids = make_views(), torch.tensor([[i, (i + 1) % 6] for i in range(6)])
    assert torch.equal(model(pixel_values=views, pair_ids=ids).loss, reloaded(pixel_values=views, pair_ids=ids).loss)
    cfg = AutoConfig.from_pretrained(tmp_path)
    assert cfg.rpp_temperature == 0.2 and cfg.augmentation["policy"] == "arbitrary_pair"
    assert type(AutoImageProcessor.from_pretrained(tmp_path)) is RPPImageProcessor


def test_paper_defaults_and_presets():
    cfg = RPPConfig()
    assert (cfg.projection_hidden_dim, cfg.projection_dim, cfg.gate_hidden_dim) == (2048, 256, 1024)
    assert cfg.rpp_temperature == 0.1 and cfg.gate_condition == "features" and cfg.gate_penalty_weight == 0.0
    assert cfg.augmentation["arbitrary_pair_prob"] == 1.0 and cfg.backbone_config.model_type == "resnet"
    demo = METHOD.make_config("cpu-demo")
    assert demo.image_size == 32 and demo.augmentation["policy"] == "arbitrary_pair"
