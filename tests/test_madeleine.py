"""MADELEINE invariants on a tiny ResNet patch encoder / tiny ABMIL (CPU, 32 px slides of 8 px tiles)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hf_ssl  # noqa: F401
from hf_ssl.modeling.madeleine import METHOD, MadeleineConfig, MadeleineForSelfSupervisedPretraining
from hf_ssl.modeling.madeleine.optimal_transport import (cosine_cost, graph_optimal_transport, ipot_plan,
                                                         sparsify_cost, wasserstein_distance)
from ddp_utils import (assert_grads_close, average_over_processes_, mean_over_ranks, parameter_grads, rank_rows,
                       run_ranks, save_rank)

TINY_RESNET = dict(model_type="resnet", layer_type="basic", depths=[1, 1], hidden_sizes=[8, 16], embedding_size=8)


def make_config(**kwargs):
    base = dict(backbone_config=dict(TINY_RESNET), tile_size=8, image_size=32, wsi_hidden_dim=16, num_heads=2,
                token_dim=8, contrastive_temperature=0.1, got_subsample=None, attention_dropout=0.0, feature_dropout=0.0)
    base.update(kwargs)
    return MadeleineConfig(**base)


def make_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return MadeleineForSelfSupervisedPretraining(make_config(**kwargs))


def slides(b=4, seed=0, stains=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, 32, 32, generator=g) for _ in range(stains)]


# ---------------------------------------------------------------------------------------------- config / input
def test_config_defaults_and_validation():
    paper = MadeleineConfig()
    assert (paper.wsi_hidden_dim, paper.num_heads, paper.token_dim, paper.contrastive_temperature, paper.got_subsample,
            paper.max_tiles, paper.train_patch_encoder) == (512, 4, 128, 0.001, 256, 2048, False)
    assert paper.backbone_config.image_size == paper.tile_size == 224
    for bad in (dict(contrastive_temperature=-0.1), dict(contrastive_temperature=0.0), dict(image_size=36), dict(stains=["HE"]),
                dict(stains=["IHC", "HE"]), dict(stains=["HE", "HE"]), dict(local_loss_weight=-1),
                dict(attention_dropout=1.0), dict(got_subsample=1), dict(num_heads=0)):
        with pytest.raises(ValueError):
            make_config(**bad)


def test_bad_input_is_a_clear_error():
    model = make_model().eval()
    with pytest.raises(ValueError, match="one slide batch per stain"):
        model(pixel_values=slides(stains=3))
    with pytest.raises(ValueError, match="channels"):
        model.get_input_features(torch.randn(2, 4, 32, 32))
    with pytest.raises(ValueError, match="multiples of tile_size"):
        model.get_slide_features(torch.randn(2, 3, 30, 30))
    with pytest.raises(ValueError, match="patch_features"):
        model(patch_features=torch.randn(2, 3, 5, 16))


# ---------------------------------------------------------------------------------------------- attention pooling
def test_multi_head_attention_pooling_weights_and_padding():
    model = make_model().eval()
    feats = torch.randn(3, 10, model.patch_dim)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[1, 6:] = False
    mask[2, 2:] = False
    slide, tokens, weights = model.embed_slides(feats, 0, mask)
    assert weights.shape == (3, 10, 2) and tokens.shape == (3, 10, 8) and slide.shape == (3, 16)
    assert torch.allclose(weights.sum(dim=1), torch.ones(3, 2), atol=1e-6)  # each head sums to one over patches
    assert (weights[~mask] == 0).all() and (weights[mask] > 0).all()
    # padded patches do not influence the slide embedding at all
    feats2 = feats.clone()
    feats2[~mask] = 1e3 * torch.randn_like(feats2[~mask])
    assert torch.allclose(model.embed_slides(feats2, 0, mask)[0], slide, atol=1e-5)
    # the slide embedding equals the hand-written pooling: projector(flatten_{(e, h)} sum_n a[n, h] * emb[n, e, h])
    abmil = model.slide_encoder
    emb, w = abmil.attention(feats, mask)
    ref = abmil.projector(torch.einsum("bneh,bnh->beh", emb, w).flatten(1))
    assert torch.allclose(ref, slide, atol=1e-5)
    # heads differ (separate gated attention nets)
    assert not torch.allclose(weights[0, :, 0], weights[0, :, 1])


# ---------------------------------------------------------------------------------------------- losses
def test_global_loss_equals_hand_written_symmetric_infonce():
    model = make_model(local_loss_weight=0.0).eval()
    x = slides(4, seed=1)
    out = model(pixel_values=x)
    he = model.get_slide_features(x[0])
    ihc = model.embed_slides(model.slide_patch_features(x[1]), 1)[0]
    a, b = F.normalize(he, dim=-1), F.normalize(ihc, dim=-1)
    logits = a @ b.t() / 0.1
    ref = 0.0
    for i in range(4):
        ref += -torch.log_softmax(logits[i], 0)[i] / 8 - torch.log_softmax(logits[:, i], 0)[i] / 8
    assert out.loss.detach().item() == pytest.approx(float(ref.detach()), rel=1e-5)
    assert out.metrics["loss_local"].item() == 0.0


def test_ipot_plan_marginals_and_optimality():
    g = torch.Generator().manual_seed(0)
    cost = torch.rand(3, 6, 5, generator=g)
    plan = ipot_plan(cost, beta=0.5, iterations=200)
    assert torch.allclose(plan.sum(dim=2), torch.full((3, 6), 1 / 6), atol=1e-4)
    assert torch.allclose(plan.sum(dim=1), torch.full((3, 5), 1 / 5), atol=1e-6)
    assert (plan >= 0).all()
    # near the exact OT optimum on a square uniform problem (a permutation): compare with brute force
    from itertools import permutations

    c = torch.rand(1, 4, 4, generator=g)
    best = min(sum(float(c[0, i, p[i]]) for i in range(4)) for p in permutations(range(4))) / 4
    assert wasserstein_distance(c, iterations=300, beta=0.1).item() == pytest.approx(best, abs=2e-3)


def test_got_is_zero_for_identical_token_sets_and_grows_with_mismatch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 12, 8, generator=g)
    same = graph_optimal_transport(x, x, subsample=None)
    other = graph_optimal_transport(x, torch.randn(2, 12, 8, generator=g), subsample=None)
    assert (other > same + 1e-3).all()
    cost = sparsify_cost(cosine_cost(x, x))
    assert (cost >= 0).all() and torch.allclose(torch.diagonal(cost, dim1=1, dim2=2), torch.zeros(2, 12), atol=1e-6)


def test_frozen_patch_encoder_gets_no_gradient_and_both_losses_train_the_slide_encoder():
    model = make_model().train()
    assert not model.encoder.training
    out = model(pixel_values=slides(4, seed=2))
    out.loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in model.encoder.parameters())
    assert out.metrics["loss_local"] > 0 and torch.isfinite(out.loss)
    assert model.slide_encoder.token_projector.weight.grad.abs().sum() > 0  # local (GOT) loss reaches tokens
    assert model.slide_encoder.projector.weight.grad.abs().sum() > 0  # global loss reaches the slide head
    trainable = make_model(train_patch_encoder=True).train()
    trainable(pixel_values=slides(4, seed=2)).loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable.encoder.parameters())


def test_patch_features_input_and_stain_encoding():
    model = make_model(add_stain_encoding=True).eval()
    feats = torch.randn(4, 2, 6, model.patch_dim)
    out = model(patch_features=feats)
    assert torch.isfinite(out.loss)
    # the stain code makes the same patches embed differently per stain
    a = model.embed_slides(feats[:, 0], 0)[0]
    b = model.embed_slides(feats[:, 0], 1)[0]
    assert not torch.allclose(a, b)


def test_features_and_export_layout():
    model = make_model().eval()
    x = slides(2, seed=3)[0]
    slide = model.get_input_features(x)
    assert slide.shape == (2, 16)
    tiles = model.export_check_input(x)
    assert tiles.shape == (2 * 16, 3, 8, 8)
    assert torch.equal(tiles[1], x[0, :, 0:8, 8:16])  # row-major tiling
    from hf_ssl.modeling.backbones import encode

    assert torch.allclose(model.get_input_features(tiles), encode(model.encoder, tiles, "cls"))


# ---------------------------------------------------------------------------------------------- views
def test_stain_simulation_views():
    from PIL import Image
    from skimage.data import immunohistochemistry

    from hf_ssl.modeling.madeleine.views_madeleine import render_stain, stain_concentrations
    from hf_ssl.training.data import build_view_generator

    ihc = Image.fromarray(immunohistochemistry()).resize((64, 64))
    hed = stain_concentrations(ihc)
    assert hed.shape == (64, 64, 3) and (hed >= 0).all() and hed[..., 2].max() > 0  # real DAB signal
    he, dab = np.asarray(render_stain(hed, "HE")), np.asarray(render_stain(hed, "IHC"))
    assert he.shape == dab.shape == (64, 64, 3) and not np.array_equal(he, dab)
    policy = build_view_generator(make_config())
    out = policy(ihc, np.random.default_rng(0))["pixel_values"]
    assert len(out) == 2 and out[0].shape == (3, 32, 32)
    digit = Image.fromarray((np.random.default_rng(0).random((32, 32)) * 255).astype(np.uint8)).convert("RGB")
    ev = build_view_generator(make_config(), "multistain_eval")
    assert torch.equal(ev(digit)["pixel_values"], ev(digit)["pixel_values"])


def test_tiny_training_run_and_save_load(tmp_path):
    from transformers import AutoModel

    from hf_ssl.training.arguments import SSLTrainingArguments
    from hf_ssl.training.data import SSLViewDataset, build_view_generator, load_image_stream
    from hf_ssl.training.trainer import SSLTrainer

    model = make_model()
    ds = SSLViewDataset(load_image_stream("builtin:digits", split="train", shuffle_buffer=16),
                        build_view_generator(model.config))
    args = SSLTrainingArguments(output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=4,
                                save_strategy="no", logging_steps=1, disable_tqdm=True, learning_rate=1e-3)
    before = model.slide_encoder.projector.weight.detach().clone()
    SSLTrainer(model=model, args=args, train_dataset=ds).train()
    assert not torch.equal(before, model.slide_encoder.projector.weight)
    model.save_pretrained(tmp_path / "ckpt")
    reloaded = AutoModel.from_pretrained(tmp_path / "ckpt").eval()
    assert type(reloaded) is MadeleineForSelfSupervisedPretraining
    x = slides(2, seed=5)[0]
    assert torch.allclose(model.eval().get_input_features(x), reloaded.get_input_features(x))
    assert [n for n, p in reloaded.named_parameters() if not p.requires_grad] == \
        [n for n, p in model.named_parameters() if not p.requires_grad]


# ---------------------------------------------------------------------------------------------- DDP
DDP_B = 8


def _ddp_step(rows):
    model = make_model(seed=3).train()
    feats = torch.randn(DDP_B, 2, 6, model.patch_dim, generator=torch.Generator().manual_seed(9))
    out = model(patch_features=feats[rows])
    model.zero_grad()
    out.loss.backward()
    grads = parameter_grads(model)
    return out.loss.detach(), {k: v.clone() for k, v in out.metrics.items()}, grads


def _ddp_worker(rank, world_size, out_dir):
    torch.set_num_threads(1)
    loss, metrics, grads = _ddp_step(rank_rows(DDP_B, rank, world_size))
    save_rank(out_dir, rank, loss=loss, metrics=metrics, grads=average_over_processes_(grads, world_size))


def test_ddp_equivalence(tmp_path):
    ranks = run_ranks(_ddp_worker, tmp_path)
    loss, metrics, grads = _ddp_step(slice(None))
    assert torch.allclose(mean_over_ranks(ranks, "loss"), loss, atol=1e-5, rtol=1e-5)
    rank_metrics = mean_over_ranks(ranks, "metrics")
    for key in ("loss_global", "loss_local"):
        assert torch.allclose(rank_metrics[key], metrics[key], rtol=1e-5, atol=1e-5), key
    assert_grads_close(ranks[0]["grads"], grads, atol=1e-6, rtol=1e-4, same_keys=True)
    assert_grads_close(ranks[1]["grads"], grads, atol=1e-6, rtol=1e-4)
