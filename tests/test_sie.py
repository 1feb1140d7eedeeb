"""SIE (Garrido et al., ICML 2023): split, hypernetwork predictor, loss placement, VICReg terms, views, DDP."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import hf_ssl  # noqa: F401
from hf_ssl.modeling.sie import METHOD, SIEConfig, SIEForSelfSupervisedPretraining, SIEImageProcessor
from hf_ssl.modeling.sie.modeling_sie import covariance_loss, variance_loss
from hf_ssl.training.data import build_view_generator
from ddp_utils import (assert_grads_close, average_over_processes_, mean_over_ranks, parameter_grads, rank_rows,
                       run_ranks, save_rank)

TINY_RESNET = dict(model_type="resnet", layer_type="basic", depths=[1, 1], hidden_sizes=[8, 16], embedding_size=8)
TINY_VIT = dict(model_type="vit", hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                patch_size=8)
P = 7


def make_model(**kw):
    base = dict(backbone_config=TINY_RESNET, image_size=32, equivariant_dim=6, projection_dims=[32, 32])
    base.update(kw)
    torch.manual_seed(0)
    return SIEForSelfSupervisedPretraining(SIEConfig(**base))


def batch(b=6, seed=0, channels=3):
    g = torch.Generator().manual_seed(seed)
    return ([torch.randn(b, channels, 32, 32, generator=g), torch.randn(b, channels, 32, 32, generator=g)],
            torch.randn(b, P, generator=g))


def test_split_dims_and_projector_widths():
    m = make_model()
    d = 16  # tiny ResNet representation
    assert m.config.invariant_dim == 10 and m.config.equivariant_dim == 6
    h = torch.arange(2 * d, dtype=torch.float32).view(2, d)
    inv, equi = m.split(h)
    assert torch.equal(inv, h[:, :10]) and torch.equal(equi, h[:, 10:])
    # official scaling round(mlp * part / D): 32 * 10 / 16 = 20, 32 * 6 / 16 = 12
    assert m.inv_emb_dim == 20 and m.equi_emb_dim == 12
    assert m.projector_inv[0].in_features == 10 and m.projector_equi[0].in_features == 6
    assert m.projector_inv[-1].bias is None and m.projector_equi[-1].bias is None
    # linear hypernetwork: one bias-free Linear P -> E*E
    assert m.predictor.hypernet[0].weight.shape == (12 * 12, P) and m.predictor.hypernet[0].bias is None


def test_config_validation():
    with pytest.raises(ValueError, match="equivariant_dim"):
        SIEConfig(backbone_config=TINY_RESNET, equivariant_dim=16)
    with pytest.raises(ValueError, match="equivariant_dim"):
        SIEConfig(backbone_config=TINY_RESNET, equivariant_dim=0)
    with pytest.raises(ValueError, match="hypernetwork"):
        SIEConfig(backbone_config=TINY_RESNET, equivariant_dim=4, hypernetwork="conv")
    with pytest.raises(ValueError, match="std_coeff"):
        SIEConfig(backbone_config=TINY_RESNET, equivariant_dim=4, std_coeff=-1)
    m = make_model().train()
    x, t = batch()
    with pytest.raises(ValueError, match="transformation_params"):
        m(pixel_values=x)
    with pytest.raises(ValueError, match="transformation_params"):
        m(pixel_values=x, transformation_params=t[:, :3])
    with pytest.raises(ValueError, match="2 views"):
        m(pixel_values=x + x, transformation_params=t)


def test_hypernetwork_predictor_depends_on_params():
    m = make_model(predictor_hidden_dims=[5], predictor_bias=True, hypernetwork="deep", hypernetwork_bias=True,
                   predictor_relu=True)
    pred = m.predictor
    z = torch.randn(4, m.equi_emb_dim)
    t = torch.randn(4, P)
    a = pred(z, t)
    assert a.shape == (4, m.equi_emb_dim)
    assert not torch.allclose(a, pred(z, t + 0.5))
    # per-sample weights: changing sample 0's params leaves the other samples' predictions unchanged
    t2 = t.clone()
    t2[0] += 1.0
    b = pred(z, t2)
    assert not torch.allclose(a[0], b[0]) and torch.allclose(a[1:], b[1:])
    # linear hypernetwork, no bias: prediction == W(t) z with W = reshape(hypernet(t))
    m = make_model()
    z, t = torch.randn(3, m.equi_emb_dim), torch.randn(3, P)
    e = m.equi_emb_dim
    W = (t @ m.predictor.hypernet[0].weight.T).view(3, e, e)
    assert torch.allclose(m.predictor(z, t), torch.einsum("boi,bi->bo", W, z), atol=1e-5)


def test_vicreg_terms_against_hand_computation():
    torch.manual_seed(1)
    x = torch.randn(7, 4, dtype=torch.float64)
    xc = x - x.mean(0, keepdim=True)
    n = x.shape[0]
    std = np.sqrt(((xc ** 2).sum(0) / (n - 1)).numpy() + 1e-4)
    assert np.isclose(variance_loss(x).item(), np.maximum(0, 1 - std).mean())
    cov = (xc.T @ xc).numpy() / (n - 1)
    off = cov - np.diag(np.diag(cov))
    assert np.isclose(covariance_loss(x).item(), (off ** 2).sum() / 4)
    # whole SIE criterion by hand
    m = make_model(projection_batch_norm=False).train()
    x, t = batch()
    out = m(pixel_values=x, transformation_params=t)
    h1 = m.encoder(x[0]).pooler_output.flatten(1)
    h2 = m.encoder(x[1]).pooler_output.flatten(1)
    z1i, z1e = m.projector_inv(h1[:, :10]), m.projector_equi(h1[:, 10:])
    z2i, z2e = m.projector_inv(h2[:, :10]), m.projector_equi(h2[:, 10:])
    pred = m.predictor(z1e, t)
    z1, z2 = torch.cat([z1i, z1e], 1), torch.cat([z2i, z2e], 1)
    expect = (10 * ((z1i - z2i) ** 2).mean() + 4.5 * ((pred - z2e) ** 2).mean()
              + 10 * (variance_loss(z1) / 2 + variance_loss(z2) / 2) + 10 * variance_loss(pred) / 2
              + covariance_loss(z1) + covariance_loss(z2))
    assert torch.allclose(out.loss, expect, rtol=1e-4, atol=1e-5)


def _grads(m, loss):
    m.zero_grad()
    loss.backward(retain_graph=True)
    return {n: (p.grad.clone() if p.grad is not None else None) for n, p in m.named_parameters()}


def test_invariance_only_on_invariant_part_and_equivariance_only_via_predictor():
    m = make_model(projection_batch_norm=False).train()
    x, t = batch()
    h1 = m.encoder(x[0]).pooler_output.flatten(1)
    h2 = m.encoder(x[1]).pooler_output.flatten(1)
    h1 = h1.detach().requires_grad_(True)
    h2 = h2.detach().requires_grad_(True)
    z1i, z1e = m.embed(h1)
    z2i, z2e = m.embed(h2)
    _, terms, _ = m.sie_losses(z1i, z1e, z2i, z2e, t)
    # invariance term: gradient only into the invariant dims, the invariant projector, nothing else
    g1, g2 = torch.autograd.grad(terms["repr_loss_inv"], [h1, h2], retain_graph=True)
    assert g1[:, :10].abs().sum() > 0 and g2[:, :10].abs().sum() > 0
    assert torch.all(g1[:, 10:] == 0) and torch.all(g2[:, 10:] == 0)
    g = _grads(m, terms["repr_loss_inv"])
    assert all(g[n] is None or torch.all(g[n] == 0) for n in g if not n.startswith("projector_inv"))
    # equivariance term: only equivariant dims, through the predictor (the hypernetwork gets gradient)
    g1, g2 = torch.autograd.grad(terms["repr_loss_equi"], [h1, h2], retain_graph=True)
    assert torch.all(g1[:, :10] == 0) and torch.all(g2[:, :10] == 0)
    assert g1[:, 10:].abs().sum() > 0 and g2[:, 10:].abs().sum() > 0
    g = _grads(m, terms["repr_loss_equi"])
    assert g["predictor.hypernet.0.weight"].abs().sum() > 0
    assert all(g[n] is None or torch.all(g[n] == 0) for n in g if n.startswith("projector_inv"))
    # it equals mse(predictor(z1_equi; t), z2_equi): prediction from view 1 to view 2
    assert torch.allclose(terms["repr_loss_equi"], F.mse_loss(m.predictor(z1e, t), z2e))


def test_no_stop_gradient_both_views_and_all_modules_trained():
    """The official SIE loss has no stop-gradient: both views and every module receive gradients."""
    m = make_model().train()
    x, t = batch()
    x = [v.clone().requires_grad_(True) for v in x]
    out = m(pixel_values=x, transformation_params=t)
    out.loss.backward()
    assert x[0].grad.abs().sum() > 0 and x[1].grad.abs().sum() > 0
    for name, p in m.named_parameters():
        assert p.grad is not None, name
    assert out.embeddings.shape == (6, 16) and not out.embeddings.requires_grad
    assert set(out.metrics) == {"repr_loss_inv", "repr_loss_equi", "std_loss", "pred_std_loss", "cov_loss"}
    emb = m(pixel_values=x[0].detach()).embeddings
    assert emb.shape == (6, 16) and m(pixel_values=x[0].detach()).loss is None


def test_view_policy_parameters():
    cfg = METHOD.make_config("cpu-demo")
    policy = build_view_generator(cfg)
    img = Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype("uint8"))
    rng = np.random.default_rng(1)
    out = policy(img, rng)
    assert len(out["pixel_values"]) == 2 and out["pixel_values"][0].shape == (3, 32, 32)
    t = out["transformation_params"]
    assert t.dtype == torch.float32 and t.shape == (P,)
    # reproduce from the same rng: relative params are p2 - p1 of the two drawn views
    rng = np.random.default_rng(1)
    _, p1 = policy.view(img, rng)
    _, p2 = policy.view(img, rng)
    assert np.allclose(t.numpy(), (p2 - p1).astype(np.float32))
    assert p1[4] in (0.0, 1.0) and -1 <= t[4] <= 1
    # identical draws give zero relative params
    same = policy.view(img, np.random.default_rng(5))[1] - policy.view(img, np.random.default_rng(5))[1]
    assert np.allclose(same, 0)


def test_tiny_trainer_run(tmp_path):
    from hf_ssl.training.arguments import SSLTrainingArguments
    from hf_ssl.training.data import SSLViewDataset, load_image_stream
    from hf_ssl.training.trainer import SSLTrainer

    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ds = SSLViewDataset(load_image_stream("builtin:digits", shuffle_buffer=32), build_view_generator(model.config))
    args = SSLTrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=8,
                                save_strategy="no", logging_steps=1, disable_tqdm=True, learning_rate=1e-3)
    trainer = SSLTrainer(model=model, args=args, train_dataset=ds)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and all(np.isfinite(h["loss"]) for h in logged)
    after = model.state_dict()
    assert not torch.equal(before["predictor.hypernet.0.weight"], after["predictor.hypernet.0.weight"])


def test_save_load_round_trip(tmp_path):
    from transformers import AutoModel

    model = make_model(hypernetwork="deep", predictor_hidden_dims=[4]).eval()
    model.save_pretrained(tmp_path)
    SIEImageProcessor.from_ssl_config(model.config).save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(reloaded) is SIEForSelfSupervisedPretraining
    x, t = batch()
    assert torch.allclose(model(pixel_values=x, transformation_params=t).loss,
                          reloaded(pixel_values=x, transformation_params=t).loss)
    assert reloaded.config.hypernetwork == "deep" and reloaded.config.predictor_hidden_dims == [4]


# -- DDP: 2 processes on half batches == 1 process on the full batch ---------------------------------------------
DDP_B = 8


def _ddp_model():
    return make_model(backbone_config=TINY_VIT, equivariant_dim=12, projection_batch_norm=False).train()


def _ddp_step(model, rows):
    x, t = batch(DDP_B, seed=4)
    out = model(pixel_values=[v[rows] for v in x], transformation_params=t[rows])
    model.zero_grad()
    out.loss.backward()
    grads = parameter_grads(model)
    return out.loss.detach(), {k: v for k, v in out.metrics.items()}, grads


def _ddp_worker(rank, world_size, out_dir):
    torch.set_num_threads(1)
    loss, metrics, grads = _ddp_step(_ddp_model(), rank_rows(DDP_B, rank, world_size))
    save_rank(out_dir, rank, loss=loss, metrics=metrics, grads=average_over_processes_(grads, world_size))


def test_ddp_equivalence(tmp_path):
    ranks = run_ranks(_ddp_worker, tmp_path)
    loss, metrics, grads = _ddp_step(_ddp_model(), slice(None))
    # gathered variance/covariance terms are identical on both ranks and equal the full-batch ones
    for key in ("std_loss", "pred_std_loss", "cov_loss"):
        assert torch.allclose(ranks[0]["metrics"][key], metrics[key], atol=1e-5)
        assert torch.allclose(ranks[1]["metrics"][key], metrics[key], atol=1e-5)
    assert torch.allclose(mean_over_ranks(ranks, "loss"), loss, atol=1e-5)
    assert_grads_close(ranks[0]["grads"], grads, atol=1e-5, rtol=1e-4, same_keys=True)
