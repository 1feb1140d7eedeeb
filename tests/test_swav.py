"""SwAV invariants on tiny CPU models (32 px global crops, 16 px local crops, a handful of prototypes)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hf_ssl  # noqa: F401  (registers the Auto classes)
from hf_ssl.modeling.backbones import BACKBONE_PRESETS, feature_dim, resolve_backbone_config
from hf_ssl.modeling.losses import sinkhorn_knopp
from hf_ssl.modeling.swav import METHOD, SwAVConfig, SwAVForSelfSupervisedPretraining, SwAVImageProcessor

TINY_RESNET = dict(model_type="resnet", layer_type="basic", depths=[1, 1], hidden_sizes=[8, 16], embedding_size=8)
TINY_VIT = dict(model_type="vit", hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                patch_size=8)
TINY_REGNET = dict(model_type="regnet", layer_type="y", depths=[1, 1], hidden_sizes=[8, 16], groups_width=8,
                   embedding_size=8)
K = 16


def make_config(backbone=TINY_RESNET, **kwargs):
    kwargs.setdefault("num_prototypes", K)
    kwargs.setdefault("projection_hidden_dim", 32)
    kwargs.setdefault("projection_dim", 16)
    kwargs.setdefault("freeze_prototypes_steps", 0)
    kwargs.setdefault("augmentation", {"num_global": 2, "num_local": 2, "local_size": 16})
    return SwAVConfig(backbone_config=dict(backbone), image_size=32, **kwargs)


def make_model(seed=0, backbone=TINY_RESNET, **kwargs):
    torch.manual_seed(seed)
    return SwAVForSelfSupervisedPretraining(make_config(backbone, **kwargs))


def make_crops(batch=4, num_global=2, num_local=2, seed=0, channels=3):
    g = torch.Generator().manual_seed(seed)
    return ([torch.randn(batch, channels, 32, 32, generator=g) for _ in range(num_global)]
            + [torch.randn(batch, channels, 16, 16, generator=g) for _ in range(num_local)])


def reference_sinkhorn(scores, epsilon, iterations):
    """Algorithm 1 of the paper / official `distributed_sinkhorn`, single process, written out plainly."""
    q = torch.exp(scores.double() / epsilon).t()  # [K, B]
    k, b = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).t()


def reference_loss(scores, codes, temperature):
    """Official averaging, written with explicit loops."""
    n = len(scores)
    total = 0.0
    for crop_id, q in codes.items():
        sub = 0.0
        for v in range(n):
            if v == crop_id:
                continue
            logp = torch.log_softmax(scores[v].double() / temperature, dim=1)
            sub += float(-(q.double() * logp).sum(dim=1).mean())
        total += sub / (n - 1)
    return total / len(codes)


def unit_scores(batch, k, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(batch, dim, generator=g), dim=1)
    c = F.normalize(torch.randn(k, dim, generator=g), dim=1)
    return z @ c.t()


# ----------------------------------------------------------------------------------------------------
# 1. Sinkhorn-Knopp codes
# ----------------------------------------------------------------------------------------------------
def test_sinkhorn_marginals_converge_to_equipartition():
    b, k = 12, 4
    scores = unit_scores(b, k)
    q = sinkhorn_knopp(scores, epsilon=0.1, iterations=500)
    assert torch.allclose(q.sum(dim=1), torch.ones(b), atol=1e-5)  # each sample: a distribution
    assert torch.allclose(q.sum(dim=0), torch.full((k,), b / k), atol=1e-3)  # each prototype: B / K samples


def test_sinkhorn_three_iterations_rows_exact_and_matches_algorithm():
    model = make_model(sinkhorn_iterations=3, sinkhorn_epsilon=0.05)
    scores = unit_scores(10, K)
    q = model.compute_codes(scores)
    assert torch.allclose(q.sum(dim=1), torch.ones(10), atol=1e-6)
    assert torch.allclose(q.double(), reference_sinkhorn(scores, 0.05, 3), atol=1e-5)
    # three iterations do not reach the equipartition: the columns are not all B/K (codes are not uniform)
    assert not torch.allclose(q.sum(dim=0), torch.full((K,), 10 / K), atol=1e-3)


def test_sinkhorn_shift_invariances():
    b = 10
    scores = unit_scores(b, K)
    q = sinkhorn_knopp(scores, 0.05, 3)
    g = torch.Generator().manual_seed(1)
    per_prototype = torch.rand(1, K, generator=g) * 0.2
    per_sample = torch.rand(b, 1, generator=g) * 0.2
    # a constant per prototype is removed exactly by the first prototype normalization (any iteration count)
    assert torch.allclose(sinkhorn_knopp(scores + per_prototype, 0.05, 3), q, atol=1e-5)
    # a global constant too (the max subtraction / total normalization)
    assert torch.allclose(sinkhorn_knopp(scores + 3.0, 0.05, 3), q, atol=1e-5)
    # a constant per sample (row of scores) only rescales that sample's column of Q: the converged
    # transport plan is invariant
    a = sinkhorn_knopp(scores, 0.1, 500)
    assert torch.allclose(sinkhorn_knopp(scores + per_sample, 0.1, 500), a, atol=1e-4)


# ----------------------------------------------------------------------------------------------------
# 2. swapped-prediction loss
# ----------------------------------------------------------------------------------------------------
def test_loss_is_log_k_for_uniform_scores():
    model = make_model().train()
    with torch.no_grad():
        model.prototypes.weight.zero_()  # every score 0: uniform predictions and uniform codes
    out = model(pixel_values=make_crops())
    assert out.loss.item() == pytest.approx(math.log(K), abs=1e-5)
    # the same for any codes with rows summing to one
    scores = [torch.zeros(3, K) for _ in range(4)]
    codes = {0: torch.softmax(torch.randn(3, K), 1), 1: F.one_hot(torch.arange(3), K).float()}
    assert model.swapped_prediction_loss(scores, codes).item() == pytest.approx(math.log(K), abs=1e-5)


def test_loss_matches_hand_computation_and_peaked_predictions_are_lower():
    model = make_model(swav_temperature=0.1)
    g = torch.Generator().manual_seed(0)
    scores = [F.normalize(torch.randn(2, K, generator=g), dim=1) for _ in range(3)]
    codes = {0: model.compute_codes(scores[0]), 1: model.compute_codes(scores[1])}
    got = model.swapped_prediction_loss(scores, codes).item()
    assert got == pytest.approx(reference_loss(scores, codes, 0.1), rel=1e-5)

    hard = F.one_hot(torch.tensor([3, 7]), K).float()
    codes = {0: hard}
    matching = [torch.zeros(2, K), 2.0 * hard, 2.0 * hard]  # crop 0 predicts nothing; crops 1, 2 peak right
    wrong = [torch.zeros(2, K), 2.0 * hard.roll(1, dims=1), 2.0 * hard.roll(1, dims=1)]
    uniform = model.swapped_prediction_loss([torch.zeros(2, K)] * 3, codes).item()
    assert uniform == pytest.approx(math.log(K), abs=1e-5)
    assert model.swapped_prediction_loss(matching, codes).item() < uniform
    assert model.swapped_prediction_loss(wrong, codes).item() > uniform


def test_forward_loss_equals_official_formula_on_its_own_scores():
    """The model's loss = official averaging over (assigned crop, other crop) pairs of its own prototype scores,
    with codes computed on the assigned crops' scores only."""
    model = make_model(crops_for_assign=[1], augmentation={"num_global": 2, "num_local": 3, "local_size": 16}).eval()
    crops = make_crops(num_local=3)
    out = model(pixel_values=crops)
    with torch.no_grad():
        scores = model.prototype_scores(model.project(model.encode_crops(crops))).split(4)
    codes = {1: reference_sinkhorn(scores[1], 0.05, 3).float()}
    assert out.loss.item() == pytest.approx(reference_loss(list(scores), codes, 0.1), rel=1e-5)
    assert torch.allclose(out.logits, scores[0], atol=1e-6)
    # embeddings are the pooled encoder features of the first crop
    assert torch.allclose(out.embeddings, model.get_image_features(crops[0]), atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# 3. prototypes: normalization and freezing
# ----------------------------------------------------------------------------------------------------
def test_prototypes_normalized_at_init_and_after_on_step_end():
    model = make_model().train()
    assert torch.allclose(model.prototypes.weight.norm(dim=1), torch.ones(K), atol=1e-6)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(pixel_values=make_crops()).loss.backward()
    opt.step()
    assert not torch.allclose(model.prototypes.weight.norm(dim=1), torch.ones(K), atol=1e-4)
    model.on_step_end(1, 10)
    assert torch.allclose(model.prototypes.weight.norm(dim=1), torch.ones(K), atol=1e-6)
    assert int(model.optimizer_step) == 1


def test_no_gradient_reaches_prototypes_while_frozen():
    model = make_model(freeze_prototypes_steps=2).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    for step in range(2):
        before = model.prototypes.weight.detach().clone()
        opt.zero_grad(set_to_none=True)
        out = model(pixel_values=make_crops(seed=step))
        assert out.metrics["prototypes_frozen"].item() == 1.0
        out.loss.backward()
        assert model.prototypes.weight.grad is None
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
        opt.step()
        assert torch.equal(model.prototypes.weight, before)  # not even weight decay touched them
        model.on_step_end(step + 1, 10)
    opt.zero_grad(set_to_none=True)
    out = model(pixel_values=make_crops(seed=5))
    assert out.metrics["prototypes_frozen"].item() == 0.0
    out.loss.backward()
    assert model.prototypes.weight.grad is not None and model.prototypes.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------------
# 4. stop-gradient through the codes
# ----------------------------------------------------------------------------------------------------
def test_codes_are_stop_gradient():
    model = make_model(swav_temperature=0.1)
    g = torch.Generator().manual_seed(0)
    s0 = torch.randn(3, K, generator=g).requires_grad_()
    s1 = torch.randn(3, K, generator=g).requires_grad_()
    q = model.compute_codes(s0)
    assert not q.requires_grad and q.grad_fn is None
    loss = model.swapped_prediction_loss([s0, s1], {0: q})  # crop 0 only enters through its (stop-grad) code
    loss.backward()
    assert s0.grad is None or s0.grad.abs().max() == 0
    expected = (torch.softmax(s1.detach() / 0.1, dim=1) - q) / 0.1 / 3  # d CE / d logits, mean over 3 samples
    assert torch.allclose(s1.grad, expected, atol=1e-5)


def test_forward_codes_carry_no_graph(monkeypatch):
    model = make_model().train()
    seen = []
    original = model.compute_codes

    def spy(scores, queue_scores=None):
        q = original(scores, queue_scores)
        seen.append(q)
        return q

    monkeypatch.setattr(model, "compute_codes", spy)
    model(pixel_values=make_crops()).loss.backward()
    assert len(seen) == 2 and all(not q.requires_grad and q.grad_fn is None for q in seen)


# ----------------------------------------------------------------------------------------------------
# 5. queue
# ----------------------------------------------------------------------------------------------------
def _spy_codes(model, monkeypatch):
    calls = []
    original = model.compute_codes

    def spy(scores, queue_scores=None):
        q = original(scores, queue_scores)
        calls.append((scores.detach().clone(), None if queue_scores is None else queue_scores.clone(), q))
        return q

    monkeypatch.setattr(model, "compute_codes", spy)
    return calls


def _assigned_embeddings(model, crops, crop_id, batch):
    with torch.no_grad():
        z = model.project(model.encode_crops(crops))
    return z[crop_id * batch:(crop_id + 1) * batch]


def test_queue_fifo_and_use_once_full(monkeypatch):
    b = 4
    model = make_model(queue_length=8).train()
    assert model.queue.shape == (2, 8, 16) and model.queue.abs().sum() == 0
    calls = _spy_codes(model, monkeypatch)
    batches = [make_crops(b, seed=s) for s in range(3)]
    pushed = []
    for step, crops in enumerate(batches[:2]):
        pushed.append([_assigned_embeddings(model, crops, c, b) for c in (0, 1)])
        out = model(pixel_values=crops)
        assert out.metrics["queue_in_use"].item() == 0.0  # empty / partly filled queue is not used
        assert all(queue_scores is None for _, queue_scores, _ in calls)
        model.on_step_end(step + 1, 10)
    for i in (0, 1):  # newest batch first
        assert torch.allclose(model.queue[i, :4], pushed[1][i], atol=1e-6)
        assert torch.allclose(model.queue[i, 4:], pushed[0][i], atol=1e-6)
    assert model.queue_is_full()

    queue_before = model.queue.clone()
    pushed.append([_assigned_embeddings(model, batches[2], c, b) for c in (0, 1)])
    calls.clear()
    out = model(pixel_values=batches[2])
    assert out.metrics["queue_in_use"].item() == 1.0
    weight = model.prototypes.weight.detach()
    assert len(calls) == 2
    for i, (scores, queue_scores, q) in enumerate(list(calls)):
        assert torch.allclose(queue_scores, queue_before[i] @ weight.t(), atol=1e-6)
        manual = reference_sinkhorn(torch.cat([queue_before[i] @ weight.t(), scores]), 0.05, 3)[-b:]
        assert torch.allclose(q.double(), manual, atol=1e-5)
        no_queue = SwAVForSelfSupervisedPretraining.compute_codes(model, scores)
        assert not torch.allclose(q, no_queue, atol=1e-3)  # the queue changes the codes
    for i in (0, 1):  # FIFO: the oldest batch dropped
        assert torch.allclose(model.queue[i, :4], pushed[2][i], atol=1e-6)
        assert torch.allclose(model.queue[i, 4:], pushed[1][i], atol=1e-6)


def test_queue_start_step_eval_mode_and_batch_check():
    model = make_model(queue_length=8, queue_start_step=2).train()
    model(pixel_values=make_crops())
    assert model.queue.abs().sum() == 0  # not started
    model.on_step_end(2, 10)
    model.eval()
    model(pixel_values=make_crops())
    assert model.queue.abs().sum() == 0  # evaluation never writes the queue
    model.train()
    model(pixel_values=make_crops())
    assert model.queue[:, :4].abs().sum() > 0 and model.queue[:, 4:].abs().sum() == 0
    with pytest.raises(ValueError, match="multiple of the global batch size"):
        model(pixel_values=make_crops(batch=3))


# ----------------------------------------------------------------------------------------------------
# 6. DDP equivalence (2 gloo processes) -- BN-free configuration: tiny ViT + projection head without BatchNorm,
#    in train mode, so every process computes exactly what one process computes on the full batch.
# ----------------------------------------------------------------------------------------------------
DDP_BATCH = 8  # global batch; 4 per process


def _ddp_model():
    return make_model(backbone=TINY_VIT, projection_batch_norm=False, queue_length=16).train()


def _ddp_scores():
    return unit_scores(DDP_BATCH, K, seed=3)


def _ddp_run(model, rows):
    """Three training forwards (queue fills with 2 global batches, then is used). Returns losses, codes, queue."""
    records = {"loss": [], "codes": [], "queue_in_use": []}
    original = model.compute_codes

    def spy(scores, queue_scores=None):
        q = original(scores, queue_scores)
        records["codes"].append(q)
        return q

    model.compute_codes = spy
    for step in range(3):
        crops = [c[rows] for c in make_crops(DDP_BATCH, seed=10 + step)]
        out = model(pixel_values=crops)
        records["loss"].append(out.loss.item())
        records["queue_in_use"].append(out.metrics["queue_in_use"].item())
    records["queue"] = model.queue.clone()
    return records


def _ddp_worker(rank, world_size, out_dir):
    torch.set_num_threads(1)
    per = DDP_BATCH // world_size
    rows = slice(rank * per, (rank + 1) * per)
    q = sinkhorn_knopp(_ddp_scores()[rows], 0.05, 3)
    records = _ddp_run(_ddp_model(), rows)
    torch.save({"q": q, **records}, os.path.join(out_dir, f"rank{rank}.pt"))


def test_ddp_two_processes_match_single_process(tmp_path):
    from ddp_utils import run_distributed

    run_distributed(_ddp_worker, tmp_path, str(tmp_path), world_size=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    # Sinkhorn on each half with the global equipartition == single-process Sinkhorn on the whole batch
    full_q = sinkhorn_knopp(_ddp_scores(), 0.05, 3)
    assert torch.allclose(torch.cat([r["q"] for r in ranks]), full_q, atol=1e-6)
    # the model: same losses (mean of the per-process means), codes (with the queue in use at step 3) and queue
    single = _ddp_run(_ddp_model(), slice(None))
    assert single["queue_in_use"] == [0.0, 0.0, 1.0] == ranks[0]["queue_in_use"] == ranks[1]["queue_in_use"]
    for step in range(3):
        assert (ranks[0]["loss"][step] + ranks[1]["loss"][step]) / 2 == pytest.approx(single["loss"][step], rel=1e-5)
    for j, q in enumerate(single["codes"]):
        assert torch.allclose(torch.cat([ranks[0]["codes"][j], ranks[1]["codes"][j]]), q, atol=1e-5)
    assert torch.allclose(ranks[0]["queue"], single["queue"], atol=1e-6)
    assert torch.equal(ranks[0]["queue"], ranks[1]["queue"])  # identical on every rank


# ----------------------------------------------------------------------------------------------------
# 7. save / load / export
# ----------------------------------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path):
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    model = make_model(queue_length=8, freeze_prototypes_steps=3)
    model.train()
    model(pixel_values=make_crops())  # fills half the queue, updates BN statistics
    model.on_step_end(2, 10)
    model.eval()
    model.save_pretrained(tmp_path)
    SwAVImageProcessor.from_ssl_config(model.config).save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path)
    assert type(reloaded) is SwAVForSelfSupervisedPretraining and not reloaded.training
    sd1, sd2 = model.state_dict(), reloaded.state_dict()
    assert sd1.keys() == sd2.keys() and {"optimizer_step", "queue"} <= set(sd1)
    for key in sd1:
        assert torch.equal(sd1[key], sd2[key]), key
    assert int(reloaded.optimizer_step) == 2 and reloaded.prototypes_frozen()
    crops = make_crops(seed=7)
    a, b = model(pixel_values=crops), reloaded(pixel_values=crops)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.logits, b.logits) and torch.equal(a.embeddings, b.embeddings)
    cfg = AutoConfig.from_pretrained(tmp_path)
    strip = lambda d: {k: v for k, v in d.items() if k != "_name_or_path"}  # noqa: E731
    assert strip(cfg.to_dict()) == strip(model.config.to_dict())
    assert cfg.augmentation == model.config.augmentation and cfg.augmentation["policy"] == "multi_crop"
    assert cfg.crops_for_assign == [0, 1] and cfg.swav_temperature == 0.1
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(processor) is SwAVImageProcessor and processor.crop_size == {"height": 32, "width": 32}


@pytest.mark.parametrize("backbone", [TINY_RESNET, TINY_VIT], ids=["resnet", "vit"])
def test_export_encoder_loads_without_hf_ssl(tmp_path, backbone):
    model = make_model(backbone=backbone).eval()
    model.export_encoder(tmp_path)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.save({"x": x, "features": model.get_image_features(x)}, tmp_path / "expected.pt")
    script = textwrap.dedent("""
        import sys, torch
        sys.modules["hf_ssl"] = None  # importing hf_ssl would fail
        from transformers import AutoImageProcessor, AutoModel
        d = sys.argv[1]
        enc = AutoModel.from_pretrained(d).eval()
        AutoImageProcessor.from_pretrained(d)
        exp = torch.load(d + "/expected.pt")
        with torch.no_grad():
            out = enc(pixel_values=exp["x"])
        feats = out.last_hidden_state[:, 0] if enc.config.model_type == "vit" else out.pooler_output.flatten(1)
        assert torch.allclose(feats, exp["features"], atol=1e-5)
        print("ok", type(enc).__name__)
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == f"ok {'ViTModel' if backbone is TINY_VIT else 'ResNetModel'}"
    assert json.load(open(tmp_path / "hf_ssl_export.json"))["method"] == "hf_ssl_swav"


# ----------------------------------------------------------------------------------------------------
# 8. nonsense configs and inputs
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(swav_temperature=-0.1), "swav_temperature"),
    (dict(swav_temperature=0.0), "swav_temperature"),
    (dict(sinkhorn_epsilon=0.0), "sinkhorn_epsilon"),
    (dict(sinkhorn_iterations=0), "sinkhorn_iterations"),
    (dict(num_prototypes=0), "num_prototypes"),
    (dict(projection_dim=0), "projection_dim"),
    (dict(crops_for_assign=[0, 2]), "crops_for_assign"),  # crop 2 is a local crop
    (dict(crops_for_assign=[]), "crops_for_assign"),
    (dict(crops_for_assign=[1, 1]), "duplicates"),
    (dict(queue_length=-1), "queue_length"),
    (dict(freeze_prototypes_steps=-5), "freeze_prototypes_steps"),
    (dict(augmentation={"num_global": 1, "num_local": 0}), "at least 2 crops"),
    (dict(augmentation={"global_size": 64}), "global_size"),
    (dict(augmentation={"local_scale": [0.5, 0.1]}), "local_scale"),
])
def test_nonsense_configs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_config(**kwargs)


def test_vit_local_size_must_fit_patches():
    with pytest.raises(ValueError, match="patch size"):
        make_config(backbone=TINY_VIT, augmentation={"num_global": 2, "num_local": 2, "local_size": 12})


def test_bad_inputs_raise_clearly():
    model = make_model().train()
    with pytest.raises(ValueError, match="channels"):
        model(pixel_values=make_crops(channels=1))
    with pytest.raises(ValueError, match="channels"):
        model(pixel_values=torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="channels"):
        model.get_image_features(torch.randn(2, 4, 32, 32))
    with pytest.raises(ValueError, match="at least 2 crops"):
        model(pixel_values=make_crops(num_global=1, num_local=0))
    with pytest.raises(ValueError, match="same batch size"):
        model(pixel_values=[torch.randn(4, 3, 32, 32), torch.randn(3, 3, 32, 32)])


# ----------------------------------------------------------------------------------------------------
# 9. training moves the loss; backbones; grouping; presets
# ----------------------------------------------------------------------------------------------------
def test_few_sgd_steps_reduce_loss():
    model = make_model().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    crops = make_crops(batch=8, seed=3)
    losses = []
    for step in range(8):
        opt.zero_grad(set_to_none=True)
        loss = model(pixel_values=crops).loss
        loss.backward()
        opt.step()
        model.on_step_end(step + 1, 8)
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses


@pytest.mark.parametrize("backbone", [TINY_RESNET, TINY_VIT, TINY_REGNET], ids=["resnet", "vit", "regnet"])
def test_backbones_train_on_multi_crop(backbone):
    model = make_model(backbone=backbone).train()
    out = model(pixel_values=make_crops())
    assert torch.isfinite(out.loss) and out.logits.shape == (4, K)
    assert out.embeddings.shape == (4, feature_dim(model.config.backbone_config)) and not out.embeddings.requires_grad
    assert all(not v.requires_grad for v in out.metrics.values())
    assert set(out.metrics) == {"swav_loss", "assignment_entropy", "prototype_usage", "prototypes_frozen",
                                "queue_in_use"}
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    single = model(pixel_values=torch.randn(2, 3, 32, 32))  # a single tensor: embeddings only
    assert single.loss is None and single.embeddings.shape[0] == 2


def test_crops_grouped_by_resolution():
    model = make_model().eval()
    calls = []
    handle = model.encoder.register_forward_hook(lambda m, args, kwargs_out: calls.append(1))
    crops = make_crops()
    feats = model.encode_crops(crops)
    assert len(calls) == 2  # one encoder call for the two 32 px crops, one for the two 16 px crops
    calls.clear()
    model.encode_crops([crops[0], crops[2], crops[1]])
    assert len(calls) == 3  # only consecutive crops of one size are batched together (order is kept)
    handle.remove()
    each = torch.cat([model.get_image_features(c) for c in crops])
    assert torch.allclose(feats, each, atol=1e-5)


def test_presets():
    seer = METHOD.make_config("seer")
    assert seer.backbone_config.model_type == "regnet" and feature_dim(seer.backbone_config) == 10444
    assert (seer.num_prototypes, seer.projection_hidden_dim, seer.projection_dim) == (16000, 8192, 256)
    assert seer.projection_num_layers == 3 and seer.projection_batch_norm is False
    assert (seer.sinkhorn_iterations, seer.sinkhorn_epsilon, seer.swav_temperature) == (10, 0.05, 0.1)
    assert (seer.augmentation["num_global"], seer.augmentation["num_local"]) == (2, 4)
    assert (seer.image_size, seer.augmentation["local_size"]) == (224, 96)

    # the regnet-y-256gf preset is what the RegNet design rule gives for VISSL's regnet256Gf_1 parameters
    def regnet_stages(w_a, w_0, w_m, depth, group_width, q=8):
        ws = w_0 * np.power(w_m, np.round(np.log((np.arange(depth) * w_a + w_0) / w_0) / np.log(w_m)))
        ws = (np.round(ws / q) * q).astype(int)
        widths, depths = np.unique(ws, return_counts=True)
        groups = [min(group_width, int(w)) for w in widths]
        return depths.tolist(), [int(round(w / g) * g) for w, g in zip(widths, groups)]

    preset = BACKBONE_PRESETS["regnet-y-256gf"]
    assert regnet_stages(230.83, 640, 2.53, 27, 373) == (preset["depths"], preset["hidden_sizes"])
    ref = BACKBONE_PRESETS["regnet-y-32gf"]  # the same rule reproduces transformers' SEER RegNetY-32GF
    assert regnet_stages(115.89, 232, 2.53, 20, 232) == (ref["depths"], ref["hidden_sizes"])
    assert resolve_backbone_config("regnet-y-256gf", None).groups_width == 373

    demo = METHOD.make_config("cpu-demo")
    model = SwAVForSelfSupervisedPretraining(demo).train()
    out = model(pixel_values=make_crops(num_local=0))
    assert torch.isfinite(out.loss)
    paper = SwAVConfig()
    assert (paper.num_prototypes, paper.projection_hidden_dim, paper.projection_dim) == (3000, 2048, 128)
    assert (paper.sinkhorn_iterations, paper.sinkhorn_epsilon, paper.swav_temperature) == (3, 0.05, 0.1)
    assert paper.freeze_prototypes_steps == 313 and paper.queue_length == 0 and paper.crops_for_assign == [0, 1]
    aug = paper.augmentation
    assert (aug["num_global"], aug["num_local"], aug["global_size"], aug["local_size"]) == (2, 6, 224, 96)
    assert aug["global_scale"] == [0.14, 1.0] and aug["local_scale"] == [0.05, 0.14]
    assert SwAVConfig(image_size=160).augmentation["global_size"] == 160


# ----------------------------------------------------------------------------------------------------
# no device->host read of the schedule state in the training step (a sync per step on GPU)
# ----------------------------------------------------------------------------------------------------
def test_training_step_reads_no_schedule_buffer_from_the_device(monkeypatch):
    model = make_model(freeze_prototypes_steps=2, queue_length=8, queue_start_step=0).train()
    model(pixel_values=make_crops(seed=0))  # first step: mirrors filled (one read each)
    model.on_step_end(1, 10)
    model(pixel_values=make_crops(seed=1))  # fills the queue (2 x 4 rows): the last read of the queue
    model.on_step_end(2, 10)
    watched = {model.optimizer_step.data_ptr(), model.queue.data_ptr()}
    reads = []
    for name in ("__int__", "__bool__", "item", "tolist", "__index__"):
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _original=original, _name=name, **kwargs):
            if self.data_ptr() in watched or (self._base is not None and self._base.data_ptr() in watched):
                reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    out = model(pixel_values=make_crops(seed=2))
    assert out.metrics["queue_in_use"] == 1.0 and out.metrics["prototypes_frozen"] == 0.0
    assert reads == []


def test_host_step_mirror_follows_a_loaded_state_dict():
    model = make_model(freeze_prototypes_steps=3)
    assert model.prototypes_frozen()
    other = make_model(freeze_prototypes_steps=3)
    other.on_step_end(5, 10)
    model.load_state_dict(other.state_dict())
    assert model.current_step() == 5 and not model.prototypes_frozen()
