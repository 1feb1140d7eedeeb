"""LVM-Med (Nguyen et al., NeurIPS 2023): graph-matching solver, blackbox gradients, Sinkhorn relaxation, affinities,
loss, training, save/load and DDP equivalence (the graphs span the gathered batch)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hf_ssl  # noqa: F401
from hf_ssl.modeling.graph_matching import (blackbox_graph_matching, graduated_assignment, hamming_loss,
                                            knn_adjacency, linear_assignment, log_sinkhorn, matching_score,
                                            quadratic_gradient, quadratic_score, solve_quadratic_assignment)
from hf_ssl.modeling.lvm_med import METHOD, LVMMedConfig, LVMMedForSelfSupervisedPretraining, LVMMedImageProcessor
from hf_ssl.modeling.lvm_med.modeling_lvm_med import local_similarity
from ddp_utils import assert_grads_close, average_over_processes_, parameter_grads, rank_rows, run_ranks, save_rank
from train_utils import tiny_training_run

TINY_RESNET = dict(model_type="resnet", layer_type="basic", depths=[1, 1], hidden_sizes=[8, 16], embedding_size=8)
TINY_VIT = dict(model_type="vit", hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                patch_size=8)


def make_model(**kw):
    base = dict(backbone_config=TINY_RESNET, image_size=32, projection_hidden_dim=32, projection_dim=16, local_dim=8,
                num_neighbors=2)
    base.update(kw)
    torch.manual_seed(0)
    return LVMMedForSelfSupervisedPretraining(LVMMedConfig(**base))


def views(b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, 32, 32, generator=g), torch.randn(b, 3, 32, 32, generator=g)]


def random_graph(n, seed, p=0.5):
    g = torch.Generator().manual_seed(seed)
    a = (torch.rand(n, n, generator=g) < p).double()
    a = ((a + a.t()) > 0).double()
    a.fill_diagonal_(0)
    return a


def perm_matrix(perm):
    n = len(perm)
    x = torch.zeros(n, n)
    x[torch.arange(n), perm] = 1
    return x


# -- the solver --------------------------------------------------------------------------------------------------
def test_quadratic_term_closed_form_matches_brute_force_and_autograd():
    n = 5
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(n, 3, generator=g).double(), torch.randn(n, 3, generator=g).double()
    a_s, a_t = random_graph(n, 1), random_graph(n, 2)
    x = torch.rand(n, n, generator=g).double()
    brute = sum(x[i, j] * x[k, l] * a_s[i, k] * a_t[j, l] * ((u[i] - u[k]) @ (v[j] - v[l]))
                for i, j, k, l in itertools.product(range(n), repeat=4))
    p = u @ v.t()
    assert torch.allclose(quadratic_score(x, p, a_s, a_t), brute)
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(quadratic_score(xr, p, a_s, a_t), xr)
    assert torch.allclose(quadratic_gradient(x, p, a_s, a_t), grad)


def test_linear_assignment_recovers_a_known_permutation():
    g = torch.Generator().manual_seed(3)
    perm = torch.randperm(10, generator=g)
    f = F.normalize(torch.randn(10, 16, generator=g), dim=1)
    scores = f @ f[perm].t()  # node i of s is node argsort(perm)[i]... of t: t_j = f[perm[j]]
    x = linear_assignment(scores)
    assert torch.equal(x.sum(0), torch.ones(10)) and torch.equal(x.sum(1), torch.ones(10))
    assert set(x.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(x.argmax(1), torch.argsort(perm))


def test_quadratic_solver_recovers_permutation_of_an_isomorphic_graph_and_never_loses_to_its_start():
    n = 12
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(n, generator=g)
    pm = perm_matrix(perm).double()  # node i of s <-> node perm[i] of t
    u = F.normalize(torch.randn(n, 8, generator=g).double(), dim=1)
    a_s = random_graph(n, 5, p=0.3)
    a_t = pm.t() @ a_s @ pm  # t is s relabelled
    v = pm.t() @ u
    p = u @ v.t()
    # vertex scores barely informative: the linear assignment is wrong, the second-order term fixes it
    noise = torch.randn(n, n, generator=g).double()
    s = 0.2 * p + noise
    lin = linear_assignment(s)
    assert not torch.equal(lin, pm)
    x = solve_quadratic_assignment(s, p, a_s, a_t, beta=1.0, iterations=20)
    assert torch.equal(x.sum(0), torch.ones(n, dtype=x.dtype)) and torch.equal(x.sum(1), torch.ones(n, dtype=x.dtype))
    assert matching_score(x.double(), s, p, a_s, a_t, 1.0) >= matching_score(lin.double(), s, p, a_s, a_t, 1.0)
    assert torch.equal(x, pm.float())
    # beta = 0 is exactly the linear assignment
    assert torch.equal(solve_quadratic_assignment(s, p, a_s, a_t, beta=0.0), lin)


def test_blackbox_gradient_is_the_interpolation_gradient():
    n, lam, beta = 6, 5.0, 0.5
    g = torch.Generator().manual_seed(1)
    s = torch.randn(n, n, generator=g).requires_grad_(True)
    u, v = torch.randn(n, 4, generator=g), torch.randn(n, 4, generator=g)
    p = (u @ v.t()).requires_grad_(True)
    a_s, a_t = random_graph(n, 7).float(), random_graph(n, 8).float()
    x = blackbox_graph_matching(s, p, a_s, a_t, beta=beta, lam=lam)
    assert torch.equal(x, solve_quadratic_assignment(s, p, a_s, a_t, beta))
    target = torch.eye(n)
    loss = hamming_loss(x, target)
    loss.backward()
    dldx = (1 - 2 * target) / n
    x_pert = solve_quadratic_assignment(s.detach() - lam * dldx, p.detach(), a_s, a_t, beta)
    assert torch.allclose(s.grad, (x - x_pert) / lam)
    pv = p.detach().requires_grad_(True)
    diff = beta * (quadratic_score(x, pv, a_s, a_t) - quadratic_score(x_pert, pv, a_s, a_t))
    (expected_p,) = torch.autograd.grad(diff, pv)
    assert torch.allclose(p.grad, expected_p / lam)
    assert s.grad.abs().sum() > 0  # the matching is wrong, so there is a gradient


def test_blackbox_gradient_with_bfloat16_affinities_next_to_float32_graphs():
    """Under autocast the affinities `s`, `p` come from bfloat16 matmuls while the graphs stay float32: the backward
    pass (run outside autocast) must not mix the dtypes, and gives each input's gradient in its own dtype, equal to
    the float32 gradient of the same (bfloat16-representable) values."""
    n, lam, beta = 6, 5.0, 0.5
    g = torch.Generator().manual_seed(3)
    s0 = torch.randn(n, n, generator=g).bfloat16()
    p0 = torch.randn(n, n, generator=g).bfloat16()
    a_s, a_t = random_graph(n, 7).float(), random_graph(n, 8).float()
    grads = {}
    for dtype in (torch.bfloat16, torch.float32):
        s, p = s0.detach().to(dtype).requires_grad_(True), p0.detach().to(dtype).requires_grad_(True)
        loss = hamming_loss(blackbox_graph_matching(s, p, a_s, a_t, beta=beta, lam=lam), torch.eye(n))
        assert loss.dtype == torch.float32
        loss.backward()
        assert s.grad.dtype == dtype and p.grad.dtype == dtype
        grads[dtype] = (s.grad.float(), p.grad.float())
    assert grads[torch.float32][1].abs().sum() > 0
    for got, ref in zip(grads[torch.bfloat16], grads[torch.float32]):
        assert torch.allclose(got, ref, rtol=1e-2, atol=1e-3)


def test_blackbox_gradient_descent_fixes_the_matching_and_vanishes_when_correct():
    n = 8
    g = torch.Generator().manual_seed(2)
    s = torch.randn(n, n, generator=g)
    target = torch.eye(n)
    for _ in range(50):
        sv = s.clone().requires_grad_(True)
        loss = hamming_loss(blackbox_graph_matching(sv, lam=10.0), target)
        if loss.item() == 0:
            break
        loss.backward()
        s = s - 1.0 * sv.grad
    assert loss.item() == 0
    sv = s.clone().requires_grad_(True)
    hamming_loss(blackbox_graph_matching(sv, lam=10.0), target).backward()
    assert torch.all(sv.grad == 0)


def test_sinkhorn_relaxation_is_doubly_stochastic_recovers_permutation_and_is_differentiable():
    n = 7
    g = torch.Generator().manual_seed(4)
    perm = torch.randperm(n, generator=g)
    f = F.normalize(torch.randn(n, 16, generator=g), dim=1)
    s = (f @ f[perm].t()).double().requires_grad_(True)
    x = log_sinkhorn(s / 0.05, 50)
    assert torch.allclose(x.sum(1), torch.ones(n, dtype=x.dtype), atol=1e-6)
    assert torch.allclose(x.sum(0), torch.ones(n, dtype=x.dtype), atol=1e-4)
    assert torch.equal(x.argmax(1), torch.argsort(perm))
    u = torch.randn(n, 3, generator=g).double()
    p = (u @ u.t()).requires_grad_(True)
    a = random_graph(n, 9)
    assert torch.autograd.gradcheck(lambda s_, p_: graduated_assignment(s_, p_, a, a, beta=0.3, temperature=0.5,
                                                                        outer_iterations=2, sinkhorn_iterations=5),
                                    (s, p))
    xs = graduated_assignment(s, p, a, a, beta=0.3, temperature=0.5)
    hamming_loss(xs, torch.eye(n, dtype=xs.dtype)).backward()
    assert s.grad.abs().sum() > 0 and p.grad.abs().sum() > 0


def test_knn_adjacency():
    f = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.0]])
    a = knn_adjacency(f, 1)
    assert torch.equal(a, a.t()) and torch.all(a.diagonal() == 0) and not a.requires_grad
    assert a[0, 1] == 1 and a[2, 3] == 1 and a.sum(1).min() >= 1
    assert a[0, 2] == 0
    assert torch.equal(knn_adjacency(f, 10), 1 - torch.eye(5))  # k is capped at N - 1


# -- the model ---------------------------------------------------------------------------------------------------
def test_config_validation_and_bad_inputs():
    for bad in (dict(num_neighbors=0), dict(local_affinity_weight=1.5), dict(edge_affinity_weight=-1),
                dict(blackbox_lambda=0), dict(matching_margin=-0.1), dict(matching_solver="hungarian"),
                dict(sinkhorn_temperature=-1.0), dict(local_grid_size=0)):
        with pytest.raises(ValueError):
            LVMMedConfig(backbone_config=TINY_RESNET, **bad)
    m = make_model().train()
    x = views()
    with pytest.raises(ValueError, match="2 views"):
        m(pixel_values=x + x)
    with pytest.raises(ValueError, match="channels"):
        m(pixel_values=[x[0][:, :2], x[1]])
    with pytest.raises(ValueError, match="batch size"):
        m(pixel_values=[x[0], x[1][:3]])
    with pytest.raises(ValueError, match="at least 2"):
        m(pixel_values=[x[0][:1], x[1][:1]])
    with pytest.raises(TypeError):
        m(pixel_values="not a tensor")


def test_local_similarity_hand_computed():
    ls = F.normalize(torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]), dim=-1)  # 1 image, 2 locations
    lt = F.normalize(torch.tensor([[[1.0, 1.0]], [[1.0, 0.0]]]), dim=-1)  # 2 images, 1 location
    sim = local_similarity(ls, lt)
    c = 2 ** -0.5
    # pair (0, 0): s->t mean(max) = mean(c, c) = c; t->s: max(c, c) = c
    # pair (0, 1): s->t mean(1, 0) = 0.5; t->s: max(1, 0) = 1
    assert torch.allclose(sim, torch.tensor([[c, 0.75]]))


def _bn_eval(model):
    model.train()
    for mod in model.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.eval()
    return model


def test_loss_equals_hand_computed_matching_loss():
    m = _bn_eval(make_model(matching_margin=0.05))
    x = views(8)
    out = m(pixel_values=x)
    with torch.no_grad():
        h1, t1 = m.encoder(x[0]).pooler_output.flatten(1), m.encoder(x[0]).last_hidden_state
        h2, t2 = m.encoder(x[1]).pooler_output.flatten(1), m.encoder(x[1]).last_hidden_state
        z1, z2 = m.projector(h1), m.projector(h2)
        a1, a2 = knn_adjacency(z1, 2), knn_adjacency(z2, 2)
        u1 = m.message_passing(z1, a1)
        u2 = m.message_passing(z2, a2)
        # mean aggregation by hand: u = W_s z + W_n mean_{neighbours} z
        mean1 = (a1 @ z1) / a1.sum(1, keepdim=True)
        assert torch.allclose(u1, m.message_passing.self_maps[0](z1) + m.message_passing.neighbor_maps[0](mean1),
                              atol=1e-6)
        n1, n2 = F.normalize(u1, dim=1), F.normalize(u2, dim=1)
        p = n1 @ n2.t()
        l1 = F.normalize(m.local_projector(t1.flatten(2).transpose(1, 2)), dim=-1)
        l2 = F.normalize(m.local_projector(t2.flatten(2).transpose(1, 2)), dim=-1)
        s = 0.5 * p + 0.5 * local_similarity(l1, l2)
        xm = solve_quadratic_assignment(s - 0.05 * torch.eye(8), p, a1, a2, beta=1.0 / 2)
    assert torch.equal(out.logits, xm)
    expected = (xm * (1 - torch.eye(8)) + (1 - xm) * torch.eye(8)).sum() / 8
    assert out.loss.item() == pytest.approx(expected.item())
    assert out.metrics["matching_accuracy"].item() == pytest.approx((xm.argmax(1) == torch.arange(8)).float().mean())
    # the margin is a training device only
    m.eval()
    with torch.no_grad():
        assert torch.equal(m(pixel_values=x).logits, solve_quadratic_assignment(s, p, a1, a2, beta=0.5))


def test_gradients_reach_every_trained_module_but_not_the_graph_structure():
    m = make_model(matching_solver="blackbox").train()
    x = [v.requires_grad_(True) for v in views(8, seed=1)]
    out = m(pixel_values=x)
    assert out.loss.item() > 0
    out.loss.backward()
    for prefix in ("encoder.", "projector.", "local_projector.", "message_passing."):
        grads = [p.grad for n, p in m.named_parameters() if n.startswith(prefix)]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), prefix
    assert x[0].grad.abs().sum() > 0 and x[1].grad.abs().sum() > 0
    assert not out.logits.requires_grad and out.embeddings.shape == (8, 16)
    emb = m(pixel_values=x[0].detach())
    assert emb.loss is None and emb.embeddings.shape == (8, 16)


def test_sinkhorn_solver_variant():
    m = _bn_eval(make_model(matching_solver="sinkhorn", sinkhorn_temperature=0.1))
    out = m(pixel_values=views(8))
    xs = out.logits
    assert torch.allclose(xs.sum(1), torch.ones(8), atol=1e-5) and torch.allclose(xs.sum(0), torch.ones(8), atol=1e-3)
    # soft Hamming loss of a doubly stochastic matrix = 2 (1 - mean diagonal)
    assert out.loss.item() == pytest.approx(2 * (1 - xs.diagonal().mean().item()), abs=1e-4)
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.encoder.parameters())


def test_first_order_matching_without_edges_is_the_linear_assignment():
    m = _bn_eval(make_model(edge_affinity_weight=0.0, local_affinity_weight=0.0, message_passing_layers=0))
    assert m.local_projector is None and m.message_passing is None
    x = views(6)
    out = m(pixel_values=x)
    with torch.no_grad():
        z1 = m.projector(m.encoder(x[0]).pooler_output.flatten(1))
        z2 = m.projector(m.encoder(x[1]).pooler_output.flatten(1))
        s = F.normalize(z1, dim=1) @ F.normalize(z2, dim=1).t()
    assert torch.equal(out.logits, linear_assignment(s))


def test_vit_backbone_and_local_grid_pooling():
    m = make_model(backbone_config=dict(TINY_VIT, patch_size=4), local_grid_size=2).train()
    out = m(pixel_values=views(4))
    assert torch.isfinite(out.loss)
    _, _, local = m.embed_view(views(4)[0])
    assert local.shape == (4, 4, 8)  # 8 x 8 patches pooled to 2 x 2


def test_tiny_trainer_run(tmp_path):
    from hf_ssl.training.data import SSLViewDataset, build_view_generator, load_image_stream

    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ds = SSLViewDataset(load_image_stream("builtin:digits", shuffle_buffer=32), build_view_generator(model.config))
    trainer = tiny_training_run(model, ds, tmp_path, batch_size=8, learning_rate=1e-2)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and all(np.isfinite(h["loss"]) for h in logged)
    assert not torch.equal(before["projector.layers.0.weight"], model.state_dict()["projector.layers.0.weight"])


def test_save_load_round_trip_and_demo_preset(tmp_path):
    from transformers import AutoModel

    model = _bn_eval(make_model(matching_solver="sinkhorn")).eval()
    model.save_pretrained(tmp_path)
    LVMMedImageProcessor.from_ssl_config(model.config).save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(reloaded) is LVMMedForSelfSupervisedPretraining
    x = views(6)
    with torch.no_grad():
        assert torch.allclose(model(pixel_values=x).loss, reloaded(pixel_values=x).loss)
    assert reloaded.config.matching_solver == "sinkhorn"
    demo = METHOD.make_config("cpu-demo")
    assert demo.image_size == 32 and METHOD.demo_training["max_steps"] > 0


# -- DDP: 2 processes on half batches == 1 process on the full batch ---------------------------------------------
DDP_B = 8


def _ddp_model(solver):
    return make_model(backbone_config=TINY_VIT, projection_batch_norm=False, matching_solver=solver,
                      sinkhorn_temperature=0.2).train()


def _ddp_step(model, rows):
    x = views(DDP_B, seed=4)
    out = model(pixel_values=[v[rows] for v in x])
    model.zero_grad()
    out.loss.backward()
    grads = parameter_grads(model)
    return out.loss.detach(), out.logits, grads


def _ddp_worker(rank, world_size, out_dir, solver):
    torch.set_num_threads(1)
    loss, logits, grads = _ddp_step(_ddp_model(solver), rank_rows(DDP_B, rank, world_size))
    save_rank(out_dir, rank, loss=loss, logits=logits, grads=average_over_processes_(grads, world_size))


@pytest.mark.parametrize("solver", ["blackbox", "sinkhorn"])
def test_ddp_equivalence(tmp_path, solver):
    ranks = run_ranks(_ddp_worker, tmp_path, solver)
    loss, logits, grads = _ddp_step(_ddp_model(solver), slice(None))
    for r in ranks:  # every process matches the whole global batch
        assert r["logits"].shape == (DDP_B, DDP_B)
        assert torch.allclose(r["logits"], logits, atol=1e-5)
        assert torch.allclose(r["loss"], loss, atol=1e-5)
    assert loss.item() > 0
    assert_grads_close(ranks[0]["grads"], grads, atol=1e-5, rtol=1e-4, same_keys=True)
