"""InterCLR: memory-bank update, pseudo-label positives, semi-hard negatives, MarginNCE, DDP, save/export."""

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import hf_ssl  # noqa: F401
from hf_ssl.modeling.interclr import METHOD, InterCLRConfig, InterCLRForSelfSupervisedPretraining
from hf_ssl.modeling.interclr.modeling_interclr import margin_nce
from hf_ssl.modeling.interclr.views_interclr import stable_image_index
from tiny_configs import TINY_CONFIGS, TINY_RESNET, tiny_config


def make_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return InterCLRForSelfSupervisedPretraining(tiny_config("interclr", **overrides))


def views(batch=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 32, 32, generator=g), torch.randn(batch, 3, 32, 32, generator=g)]


def unit(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_bank_momentum_update_formula():
    model = make_model()
    d = model.config.projection_dim
    first, second = unit(3, d, 1), unit(3, d, 2)
    slots = torch.tensor([5, 9, 70 % 64])
    model.update_memory(slots, first * 3.0)  # new slots store the normalized key
    assert torch.allclose(model.memory_bank[slots], first, atol=1e-6)
    assert model.memory_filled[slots].all() and int(model.memory_filled.sum()) == 3
    model.update_memory(slots, second)
    m = model.config.memory_momentum
    expected = F.normalize((1 - m) * first + m * second, dim=1)
    assert m == 0.5 and torch.allclose(model.memory_bank[slots], expected, atol=1e-6)
    # duplicate slots in one update: the last occurrence wins (deterministic)
    model.update_memory(torch.tensor([20, 20]), unit(2, d, 3))
    assert torch.allclose(model.memory_bank[20], unit(2, d, 3)[1], atol=1e-6)
    assert model.bank_slots(torch.tensor([64 * 7 + 3])).item() == 3


def filled_model(n=48, seed=0, **overrides):
    model = make_model(**overrides)
    d = model.config.projection_dim
    model.update_memory(torch.arange(n), unit(n, d, seed))
    model.run_kmeans()
    return model


def test_kmeans_and_centroid_update():
    model = filled_model()
    assert bool(model.centroids_ready)
    filled = model.memory_filled
    labels = model.memory_labels[filled]
    assert (labels >= 0).all() and (model.memory_labels[~filled] == -1).all()
    for c in labels.unique():  # centroids are the cluster means
        assert torch.allclose(model.centroids[c], model.memory_bank[filled][labels == c].mean(0), atol=1e-5)
    # online labels of updated entries = nearest centroid by dot product
    new = unit(4, model.config.projection_dim, 9)
    model.update_memory(torch.arange(4), new)
    assert torch.equal(model.memory_labels[:4], (model.memory_bank[:4] @ model.centroids.t()).argmax(1))


def test_pseudo_label_positives_are_same_cluster():
    model = filled_model()
    labels = model.memory_labels[:16].clone()
    for seed in range(5):
        u = torch.rand(16, generator=torch.Generator().manual_seed(seed))
        pos, valid = model.sample_positives(labels, u)
        assert valid.all() and model.memory_filled[pos].all()
        assert torch.equal(model.memory_labels[pos], labels)
    # a cluster without filled members gives no positive
    empty = torch.tensor([model.config.num_clusters + 5])
    _, valid = model.sample_positives(empty, torch.rand(1))
    assert not valid.any()


def test_semihard_negatives_fall_in_rank_range():
    model = filled_model(n=48, semihard_rank_range=[4, 20], num_negatives=8)
    q = unit(6, model.config.projection_dim, 11)
    labels = model.memory_labels[:6].clone()
    keys = torch.rand(6, 16, generator=torch.Generator().manual_seed(0))
    neg, valid = model.sample_negatives(q, labels, keys)
    assert neg.shape == (6, 8)
    for i in range(6):
        cand = ((model.memory_labels != labels[i]) & model.memory_filled).nonzero().squeeze(1)
        sims = q[i] @ model.memory_bank[cand].t()
        ranked = cand[sims.argsort(descending=True)]
        allowed = set(ranked[4:20].tolist())
        chosen = neg[i][valid[i]].tolist()
        assert len(set(chosen)) == len(chosen)  # without replacement
        assert set(chosen) <= allowed
        assert (model.memory_labels[neg[i][valid[i]]] != labels[i]).all()
        assert valid[i].sum() == min(8, max(0, min(20, len(ranked)) - 4))


def test_margin_nce_hand_computed():
    pos = torch.tensor([0.6], dtype=torch.float64)
    neg = torch.tensor([[0.2, -0.1]], dtype=torch.float64)
    tau, margin = 0.2, -0.5
    got = margin_nce(pos, neg, margin, tau)
    a, b, c = (0.6 + 0.5) / 0.2, 0.2 / 0.2, -0.1 / 0.2
    expected = -(a - math.log(math.exp(a) + math.exp(b) + math.exp(c)))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    no_margin = margin_nce(pos, neg, 0.0, tau)
    a0 = 0.6 / 0.2
    assert no_margin.item() == pytest.approx(-(a0 - math.log(math.exp(a0) + math.exp(b) + math.exp(c))), rel=1e-6)
    assert got.item() < no_margin.item()  # a negative margin loosens the positive constraint
    masked = margin_nce(pos, neg, margin, tau, torch.tensor([[True, False]]))
    assert masked.item() == pytest.approx(-(a - math.log(math.exp(a) + math.exp(b))), rel=1e-6)


def test_forward_losses_and_stop_gradient():
    model = make_model().train()
    x, idx = views(), torch.arange(8)
    out = model(pixel_values=x, sample_index=idx)
    assert out.metrics["inter_active"] == 0  # bank not clustered yet: intra only
    assert out.loss.item() == pytest.approx(0.75 * out.metrics["intra_loss"].item(), rel=1e-6)
    out.loss.backward()
    assert all(p.grad is None for p in model.teacher_encoder.parameters())
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith("teacher_"))
    model.on_step_end(1, 10)  # inter_start_step=1: k-means
    assert bool(model.centroids_ready)
    out = model(pixel_values=x, sample_index=idx)
    assert out.metrics["inter_active"] == 1 and out.metrics["inter_valid_fraction"] == 1
    total = 0.75 * out.metrics["intra_loss"] + 0.25 * out.metrics["inter_loss"]
    assert out.loss.item() == pytest.approx(total.item(), rel=1e-5)
    # EMA formula of teacher encoder + neck
    model2 = make_model()
    with torch.no_grad():
        for p in model2.encoder.parameters():
            p.add_(0.1)
    t_before = [p.clone() for p in model2.teacher_encoder.parameters()]
    model2.on_step_end(1, 10)
    m = model2.config.teacher_momentum
    for t0, t1, s in zip(t_before, model2.teacher_encoder.parameters(), model2.encoder.parameters()):
        assert torch.allclose(t1, m * t0 + (1 - m) * s, atol=1e-6)


def test_queue_fifo():
    model = make_model().train()
    old = model.queue.clone()
    model(pixel_values=views(batch=8), sample_index=torch.arange(8))
    assert int(model.queue_ptr) == 8 and torch.equal(model.queue[8:], old[8:])
    k = model.key(views(batch=8)[1])
    assert torch.allclose(model.queue[:8], k, atol=1e-6)
    model(pixel_values=views(batch=5), sample_index=torch.arange(5))  # a partial batch wraps around
    assert int(model.queue_ptr) == 13


# ----------------------------------------------------------------------------------------------------
# DDP: bank/queue/labels/centroids and losses equal a single process on the concatenated batch
# ----------------------------------------------------------------------------------------------------
def _ddp_run(rows):
    model = make_model(seed=0).train()
    for module in model.modules():  # eval-mode BatchNorm: per-sample features, so halves == whole batch
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    opt_losses, metrics = [], []
    for step in range(3):
        x = [v[rows] for v in views(batch=8, seed=step)]
        idx = (torch.arange(8) * 7 + step)[rows]
        out = model(pixel_values=x, sample_index=idx)
        opt_losses.append(out.loss.item())
        metrics.append(out.metrics["inter_active"].item())
        model.on_step_end(step + 1, 3)
    state = {k: model.state_dict()[k].clone() for k in
             ("memory_bank", "memory_labels", "memory_filled", "centroids", "queue", "queue_ptr")}
    return {"loss": opt_losses, "active": metrics, **state}


def _ddp_worker(rank, world_size, out_dir):
    torch.set_num_threads(1)
    per = 8 // world_size
    torch.save(_ddp_run(slice(rank * per, (rank + 1) * per)), os.path.join(out_dir, f"rank{rank}.pt"))


def test_ddp_two_processes_match_single_process(tmp_path):
    from ddp_utils import run_distributed

    run_distributed(_ddp_worker, tmp_path, str(tmp_path), world_size=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    single = _ddp_run(slice(None))
    assert single["active"] == [0.0, 1.0, 1.0] == ranks[0]["active"]
    for step in range(3):
        assert (ranks[0]["loss"][step] + ranks[1]["loss"][step]) / 2 == pytest.approx(single["loss"][step], rel=1e-5)
    for key in ("memory_bank", "centroids", "queue"):
        assert torch.equal(ranks[0][key], ranks[1][key]), key  # identical on every rank
        assert torch.allclose(ranks[0][key], single[key], atol=1e-5), key
    for key in ("memory_labels", "memory_filled", "queue_ptr"):
        assert torch.equal(ranks[0][key], single[key]) and torch.equal(ranks[1][key], single[key]), key


# ----------------------------------------------------------------------------------------------------
# save / load / export / configs / training
# ----------------------------------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path):
    from transformers import AutoModel

    model = make_model().train()
    model(pixel_values=views(), sample_index=torch.arange(8))
    model.on_step_end(1, 10)
    model.eval()
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path)
    assert type(reloaded) is InterCLRForSelfSupervisedPretraining
    sd1, sd2 = model.state_dict(), reloaded.state_dict()
    assert sd1.keys() == sd2.keys() and {"memory_bank", "memory_labels", "centroids", "queue"} <= set(sd1)
    for key in sd1:
        assert torch.equal(sd1[key], sd2[key]), key
    x, idx = views(seed=5), torch.arange(8)
    a, b = model(pixel_values=x, sample_index=idx), reloaded(pixel_values=x, sample_index=idx)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.embeddings, b.embeddings)


def test_export_encoder_loads_without_hf_ssl(tmp_path):
    model = make_model().eval()
    model.export_encoder(tmp_path)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.save({"x": x, "features": model.get_image_features(x)}, tmp_path / "expected.pt")
    script = textwrap.dedent("""
        import sys, torch
        sys.modules["hf_ssl"] = None
        from transformers import AutoModel
        d = sys.argv[1]
        enc = AutoModel.from_pretrained(d).eval()
        exp = torch.load(d + "/expected.pt")
        with torch.no_grad():
            feats = enc(pixel_values=exp["x"]).pooler_output.flatten(1)
        assert torch.allclose(feats, exp["features"], atol=1e-5)
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.load(open(tmp_path / "hf_ssl_export.json"))["method"] == "hf_ssl_interclr"


@pytest.mark.parametrize("kwargs, match", [
    (dict(contrastive_temperature=0.0), "contrastive_temperature"),
    (dict(memory_momentum=0.0), "memory_momentum"),
    (dict(num_clusters=100), "num_clusters"),
    (dict(semihard_rank_range=[10, 5]), "semihard_rank_range"),
    (dict(semihard_rank_range=[0, 100]), "semihard_rank_range"),
    (dict(num_negatives=20), "num_negatives"),
    (dict(inter_margin=3.0), "inter_margin"),
    (dict(inter_loss_weight=-1.0), "inter_loss_weight"),
    (dict(queue_length=0), "queue_length"),
    (dict(kmeans_interval=0), "kmeans_interval"),
])
def test_nonsense_configs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_config("interclr", **kwargs)


def test_bad_inputs_raise_clearly():
    model = make_model().train()
    with pytest.raises(ValueError, match="2 views"):
        model(pixel_values=views()[:1])
    with pytest.raises(ValueError, match="one id per image"):
        model(pixel_values=views(), sample_index=torch.arange(3))
    with pytest.raises(ValueError, match="channels"):
        model(pixel_values=[torch.randn(8, 1, 32, 32)] * 2)


def test_few_steps_reduce_loss():
    model = make_model().train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    x = views(batch=8, seed=3)
    losses = []
    queue = model.queue.clone()
    for step in range(8):
        model.queue.copy_(queue)  # keep the fixed batch's own keys out of the negatives
        loss = model(pixel_values=x).loss  # intra-image branch on a fixed batch
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # step 0 has teacher == student (trivially small loss); from then on the loss must fall
    assert losses[-1] < losses[1] - 0.05, losses


def test_view_policy_gives_stable_index_and_presets():
    from PIL import Image

    from hf_ssl.training.data import build_view_generator
    import numpy as np

    config = tiny_config("interclr")
    policy = build_view_generator(config)
    img = Image.fromarray((np.arange(36 * 36 * 3) % 255).astype("uint8").reshape(36, 36, 3))
    a = policy(img, np.random.default_rng(0))
    b = policy(img.copy(), np.random.default_rng(1))
    assert a["sample_index"] == b["sample_index"] == stable_image_index(img) >= 0
    assert len(a["pixel_values"]) == 2 and a["pixel_values"][0].shape == (3, 32, 32)
    paper = InterCLRConfig()
    assert (paper.num_clusters, paper.memory_momentum, paper.inter_margin) == (10000, 0.5, -0.5)
    assert (paper.intra_loss_weight, paper.inter_loss_weight, paper.contrastive_temperature) == (0.75, 0.25, 0.2)
    assert paper.semihard_rank_range == [0, 128000] and paper.num_negatives == 16384
    demo = METHOD.make_config("cpu-demo")
    assert demo.image_size == 32 and demo.augmentation["policy"] == "interclr"
