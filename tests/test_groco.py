"""GroCo invariants on tiny CPU models: the differentiable sorting network, the group ordering loss, hard-negative
selection, stop-gradients, the view policy, DDP equivalence, training and save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import hf_ssl  # noqa: F401  (registers the Auto classes)
from hf_ssl.modeling.groco import METHOD, GroCoConfig, GroCoForSelfSupervisedPretraining, GroCoImageProcessor
from hf_ssl.modeling.groco.modeling_groco import group_ordering_loss
from hf_ssl.modeling.sorting import (SORTING_DISTRIBUTIONS, differentiable_sort, hard_sort_permutation,
                                     odd_even_layers, swap_probability)
from hf_ssl.training.data import build_view_generator
from ddp_utils import assert_ddp_matches_single, parameter_grads, rank_rows, run_ranks, save_rank

TINY_RESNET = dict(model_type="resnet", layer_type="basic", depths=[1, 1], hidden_sizes=[8, 16], embedding_size=8)


def make_config(**kwargs):
    kwargs.setdefault("backbone_config", dict(TINY_RESNET))
    kwargs.setdefault("image_size", 32)
    kwargs.setdefault("projection_hidden_dim", 32)
    kwargs.setdefault("projection_dim", 16)
    kwargs.setdefault("num_negatives", 3)
    return GroCoConfig(**kwargs)


def make_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return GroCoForSelfSupervisedPretraining(make_config(**kwargs))


def make_views(batch=6, num_global=2, num_local=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ([torch.randn(batch, 3, 32, 32, generator=g) for _ in range(num_global)]
            + [torch.randn(batch, 3, 16, 16, generator=g) for _ in range(num_local)])


# ----------------------------------------------------------------------------------------------------
# 1. differentiable sorting network
# ----------------------------------------------------------------------------------------------------
def reference_odd_even_sort(x, steepness, distribution="cauchy"):
    """Element-by-element relaxed odd-even transposition sort of one row (python loops, float64)."""
    n = len(x)
    vals = [float(v) for v in x]
    perm = np.eye(n)
    for layer in range(n):
        for i in range(layer % 2, n - 1, 2):
            a, b = vals[i], vals[i + 1]
            alpha = float(swap_probability(torch.tensor(b - a, dtype=torch.float64), steepness, distribution))
            vals[i], vals[i + 1] = alpha * a + (1 - alpha) * b, (1 - alpha) * a + alpha * b
            ci, cj = perm[:, i].copy(), perm[:, i + 1].copy()
            perm[:, i], perm[:, i + 1] = alpha * ci + (1 - alpha) * cj, (1 - alpha) * ci + alpha * cj
    return np.array(vals), perm


def test_odd_even_network_structure():
    layers = odd_even_layers(5)
    assert len(layers) == 5
    assert layers[0] == ((0, 2), (1, 3)) and layers[1] == ((1, 3), (2, 4))
    for lower, upper in layers:  # disjoint adjacent comparators
        wires = list(lower) + list(upper)
        assert len(set(wires)) == len(wires) and all(b == a + 1 for a, b in zip(lower, upper))


@pytest.mark.parametrize("distribution", SORTING_DISTRIBUTIONS)
def test_soft_permutation_is_doubly_stochastic_and_matches_reference(distribution):
    x = torch.randn(4, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sorted_x, perm = differentiable_sort(x, steepness=2.0, distribution=distribution)
    assert perm.shape == (4, 7, 7) and (perm >= -1e-12).all()
    assert torch.allclose(perm.sum(dim=1), torch.ones(4, 7, dtype=torch.float64), atol=1e-10)  # columns
    assert torch.allclose(perm.sum(dim=2), torch.ones(4, 7, dtype=torch.float64), atol=1e-10)  # rows
    assert torch.allclose(sorted_x, (x.unsqueeze(1) @ perm).squeeze(1), atol=1e-10)
    for b in range(4):
        ref_vals, ref_perm = reference_odd_even_sort(x[b], 2.0, distribution)
        assert np.allclose(sorted_x[b].numpy(), ref_vals, atol=1e-10)
        assert np.allclose(perm[b].numpy(), ref_perm, atol=1e-10)


def test_converges_to_hard_sort_as_steepness_grows():
    x = torch.randn(8, 9, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    hard = hard_sort_permutation(x)
    assert torch.equal(torch.einsum("bi,bij->bj", x, hard), torch.sort(x, dim=1).values)
    errors = []
    for steepness in (1.0, 10.0, 100.0, 1e4, 1e8):
        sorted_x, perm = differentiable_sort(x, steepness=steepness)
        errors.append(float((perm - hard).abs().max()))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-3
    sorted_x, _ = differentiable_sort(x, steepness=1e8)
    assert torch.allclose(sorted_x, torch.sort(x, dim=1).values, atol=1e-4)


def test_sort_gradients_flow_and_bad_inputs():
    x = torch.randn(3, 5, requires_grad=True)
    sorted_x, perm = differentiable_sort(x, steepness=3.0)
    (sorted_x[:, -1].sum() + perm[:, 0, -1].sum()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="steepness"):
        differentiable_sort(x.detach(), steepness=0.0)
    with pytest.raises(ValueError, match="distribution"):
        differentiable_sort(x.detach(), distribution="nope")
    with pytest.raises(ValueError, match="batch, n"):
        differentiable_sort(torch.randn(5))


# ----------------------------------------------------------------------------------------------------
# 2. the group ordering loss
# ----------------------------------------------------------------------------------------------------
def _scores(k=4, p=2, gap=1.0, reverse=False):
    neg = torch.linspace(-0.5, 0.0, k)
    pos = torch.linspace(0.0, 0.3, p) + gap
    if reverse:
        neg, pos = neg + gap + 1.0, pos - gap - 1.0
    return torch.cat([neg, pos]).unsqueeze(0).repeat(3, 1)


def test_loss_near_zero_when_positives_outrank_negatives_and_large_when_reversed():
    good = group_ordering_loss(_scores(), 4, steepness=1000.0)
    bad = group_ordering_loss(_scores(reverse=True), 4, steepness=1000.0)
    assert float(good) < 1e-2
    assert float(bad) > 2.0
    # at the official steepness the ordering is still strictly monotone in how well the groups are separated
    losses = [float(group_ordering_loss(_scores(gap=g), 4, steepness=1.0)) for g in (2.0, 0.5, 0.0, -1.0)]
    assert all(a < b for a, b in zip(losses, losses[1:])), losses
    assert float(group_ordering_loss(_scores(reverse=True), 4, steepness=1.0)) > losses[-1]


def test_loss_ignores_order_within_groups_and_matches_hand_computation():
    # within-group order does not matter when the groups are far apart (hard limit)
    s1 = torch.tensor([[-3.0, -2.0, -1.0, 5.0, 6.0]])
    s2 = torch.tensor([[-1.0, -2.5, -2.0, 6.0, 5.5]])
    assert float(group_ordering_loss(s1, 3, steepness=1e4)) < 1e-3
    assert float(group_ordering_loss(s2, 3, steepness=1e4)) < 1e-3
    # hand computation of the BCE on the group probabilities
    s = torch.tensor([[0.1, 0.4, 0.2, 0.3]])
    _, perm = differentiable_sort(s, 1.0)
    p_neg = perm[0, :, :2].sum(1)
    t = torch.tensor([1.0, 1.0, 0.0, 0.0])
    bce = lambda p, y: float(-(y * p.log() + (1 - y) * (1 - p).log()).mean())  # noqa: E731
    expected = (bce(1 - p_neg, 1 - t) + bce(p_neg, t)) / 2
    assert float(group_ordering_loss(s, 2, steepness=1.0)) == pytest.approx(expected, rel=1e-5)


def test_loss_gradient_pushes_positives_up_and_negatives_down():
    s = torch.tensor([[0.0, 0.2, 0.1, 0.3]], requires_grad=True)  # interleaved
    group_ordering_loss(s, 2, steepness=1.0).backward()
    assert (s.grad[0, 2:] < 0).all() and (s.grad[0, :2] > 0).all()


# ----------------------------------------------------------------------------------------------------
# 3. the model: scores, hard negatives, stop-gradient, multi-crop
# ----------------------------------------------------------------------------------------------------
def test_anchor_scores_take_hardest_other_images_and_sorted_positives():
    model = make_model(num_negatives=3)
    g = torch.Generator().manual_seed(0)
    anchor, p1, p2 = (torch.randn(6, 16, generator=g) for _ in range(3))
    sims, pos, neg = model.anchor_scores(anchor, [p1, p2])
    a = F.normalize(anchor, dim=1)
    full = a @ a.t()
    for i in range(6):
        others = torch.cat([full[i, :i], full[i, i + 1:]])
        assert torch.allclose(neg[i], torch.sort(others).values[-3:], atol=1e-6)
        cos = torch.stack([F.cosine_similarity(anchor[i], p1[i], dim=0), F.cosine_similarity(anchor[i], p2[i], dim=0)])
        assert torch.allclose(pos[i], torch.sort(cos).values, atol=1e-6)
    assert torch.equal(sims, torch.cat([neg, pos], dim=1))


@pytest.mark.parametrize("stop_gradient", [True, False])
def test_stop_gradient_on_positives_and_negatives(stop_gradient):
    model = make_model(stop_gradient=stop_gradient, num_negatives=2)
    anchor = torch.randn(5, 16, generator=torch.Generator().manual_seed(4)).requires_grad_(True)
    positive = torch.randn(5, 16, generator=torch.Generator().manual_seed(5)).requires_grad_(True)
    sims, _, _ = model.anchor_scores(anchor, [positive])
    group_ordering_loss(sims[:1], 2).backward()  # the loss of anchor 0 only
    assert anchor.grad[0].abs().sum() > 0
    if stop_gradient:  # positives and negatives (the other anchors) are detached
        assert positive.grad is None
        assert anchor.grad[1:].abs().sum() == 0
    else:
        assert positive.grad[0].abs().sum() > 0
        assert anchor.grad[1:].abs().sum() > 0  # its hardest negatives are other anchors


def test_forward_loss_is_mean_over_all_anchor_views_with_global_positives():
    model = make_model(augmentation={"num_global": 2, "num_local": 2, "local_size": 16}, num_negatives=2).eval()
    views = make_views(num_global=2, num_local=2)
    out = model(pixel_values=views)
    with torch.no_grad():
        z = list(model.projection_head(model.encode_views(views)).split(6))
        expected = 0.0
        for a in range(4):
            sims, pos, _ = model.anchor_scores(z[a], [z[p] for p in range(2) if p != a])
            assert pos.shape[1] == (1 if a < 2 else 2)  # local crops have both global views as positives
            expected += float(group_ordering_loss(sims, 2))
    assert float(out.loss.detach()) == pytest.approx(expected / 4, rel=1e-5)
    assert out.logits.shape == (6, 3) and out.embeddings.shape[0] == 6 and not out.embeddings.requires_grad
    assert 0.0 <= float(out.metrics["ordering_accuracy"]) <= 1.0
    assert all(not v.requires_grad for v in out.metrics.values())


def test_training_step_reaches_encoder_and_few_steps_reduce_loss():
    model = make_model(num_negatives=2).train()
    views = make_views(batch=8, seed=3)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        out = model(pixel_values=views)
        opt.zero_grad()
        out.loss.backward()
        if not losses:
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
        opt.step()
        losses.append(float(out.loss.detach()))
    assert losses[-1] < losses[0]


def test_bad_inputs_and_configs_raise_clearly():
    model = make_model(num_negatives=3)
    with pytest.raises(ValueError, match="num_negatives"):
        model(pixel_values=make_views(batch=3))  # only 2 other images for k = 3
    with pytest.raises(ValueError, match="at least num_global"):
        model(pixel_values=make_views()[:1])
    with pytest.raises(ValueError, match="channels"):
        model(pixel_values=[torch.randn(6, 4, 32, 32)] * 2)
    with pytest.raises(ValueError, match="same batch size"):
        model(pixel_values=[torch.randn(6, 3, 32, 32), torch.randn(5, 3, 32, 32)])
    for kwargs, match in [({"sorting_steepness": 0.0}, "steepness"), ({"sorting_distribution": "x"}, "distribution"),
                          ({"num_negatives": 0}, "num_negatives"), ({"augmentation": {"num_global": 1}}, "num_global"),
                          ({"augmentation": {"global_solarize": [0.0, 1.5]}}, "probability"),
                          ({"projection_hidden_dim": 0}, "projection_hidden_dim")]:
        with pytest.raises(ValueError, match=match):
            make_config(**kwargs)
    assert model(pixel_values=torch.randn(2, 3, 32, 32)).loss is None


# ----------------------------------------------------------------------------------------------------
# 4. view policy
# ----------------------------------------------------------------------------------------------------
def test_view_policy_asymmetric_dino_views_and_local_crops():
    config = make_config(augmentation={"num_global": 3, "num_local": 2, "local_size": 16})
    policy = build_view_generator(config)
    assert [v.gaussian_blur for v in policy.global_views] == [1.0, 0.1, 1.0]
    assert [v.solarize for v in policy.global_views] == [0.0, 0.2, 0.0]
    assert policy.local_view.gaussian_blur == 0.5 and policy.local_view.solarize == 0.0
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    out = policy(img, np.random.default_rng(0))
    assert [tuple(v.shape) for v in out["pixel_values"]] == [(3, 32, 32)] * 3 + [(3, 16, 16)] * 2


# ----------------------------------------------------------------------------------------------------
# 5. DDP equivalence: 2 processes on half batches == 1 process on the full batch (eval-mode BatchNorm, so every
#    sample's projection is batch independent; negatives are gathered across processes)
# ----------------------------------------------------------------------------------------------------
DDP_BATCH = 8


def _ddp_views():
    return make_views(batch=DDP_BATCH, seed=11)


def _loss_and_grads(model, rows):
    model.zero_grad()
    out = model(pixel_values=[v[rows] for v in _ddp_views()])
    out.loss.backward()
    return float(out.loss.detach()), parameter_grads(model)


def _ddp_worker(rank, world_size, out_dir, stop_gradient):
    torch.set_num_threads(1)
    model = make_model(num_negatives=5, stop_gradient=stop_gradient).eval()
    loss, grads = _loss_and_grads(model, rank_rows(DDP_BATCH, rank, world_size))
    save_rank(out_dir, rank, loss=loss, grads=grads)


@pytest.mark.parametrize("stop_gradient", [True, False])
def test_ddp_two_processes_match_single_process(tmp_path, stop_gradient):
    ranks = run_ranks(_ddp_worker, tmp_path, stop_gradient)
    loss, grads = _loss_and_grads(make_model(num_negatives=5, stop_gradient=stop_gradient).eval(), slice(None))
    # DDP averages the per-process gradients
    assert_ddp_matches_single(ranks, loss, grads, atol=1e-6, rtol=1e-5, grads_averaged=False, same_keys=True)


# ----------------------------------------------------------------------------------------------------
# 6. trainer run, save / load, presets
# ----------------------------------------------------------------------------------------------------
def test_tiny_trainer_run(tmp_path):
    from hf_ssl.training.arguments import SSLTrainingArguments
    from hf_ssl.training.data import SSLViewDataset, load_image_stream
    from hf_ssl.training.trainer import SSLTrainer

    model = make_model(num_negatives=2)
    ds = SSLViewDataset(load_image_stream("builtin:digits", shuffle_buffer=32), build_view_generator(model.config))
    args = SSLTrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=8,
                                save_strategy="no", logging_steps=1, disable_tqdm=True, learning_rate=1e-3)
    trainer = SSLTrainer(model=model, args=args, train_dataset=ds)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and all(np.isfinite(h["loss"]) for h in logged) and "ordering_accuracy" in logged[-1]


def test_save_load_round_trip(tmp_path):
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    model = make_model(sorting_distribution="logistic", sorting_steepness=2.0).eval()
    model.save_pretrained(tmp_path)
    GroCoImageProcessor.from_ssl_config(model.config).save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path)
    assert type(reloaded) is GroCoForSelfSupervisedPretraining
    views = make_views()
    assert torch.equal(model(pixel_values=views).loss, reloaded(pixel_values=views).loss)
    cfg = AutoConfig.from_pretrained(tmp_path)
    assert cfg.sorting_distribution == "logistic" and cfg.sorting_steepness == 2.0 and cfg.num_negatives == 3
    assert cfg.augmentation["policy"] == "groco"
    assert type(AutoImageProcessor.from_pretrained(tmp_path)) is GroCoImageProcessor


def test_paper_defaults_and_presets():
    cfg = GroCoConfig()
    assert (cfg.num_negatives, cfg.sorting_steepness, cfg.sorting_distribution) == (10, 1.0, "cauchy")
    assert cfg.projection_num_layers == 3 and cfg.projection_dim == 2048 and cfg.stop_gradient
    assert cfg.backbone_config.model_type == "resnet" and cfg.image_size == 224
    assert cfg.augmentation["global_scale"] == [0.14, 1.0] and cfg.augmentation["num_global"] == 2
    demo = METHOD.make_config("cpu-demo")
    assert demo.image_size == 32 and demo.augmentation["policy"] == "groco"
