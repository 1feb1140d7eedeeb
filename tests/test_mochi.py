"""MoCHi (Kalantidis et al., NeurIPS 2020): MoCo v2 invariants + hard negative mixing."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

import hf_ssl  # noqa: F401  (registers the Auto classes)
from hf_ssl.modeling.backbones import encode
from hf_ssl.modeling.mochi import METHOD, MoCHiConfig, MoCHiForSelfSupervisedPretraining, MoCHiImageProcessor
from hf_ssl.modeling.mochi.modeling_mochi import hard_negatives, mix_hard_negatives

TINY_RESNET = dict(model_type="resnet", layer_type="basic", depths=[1, 1], hidden_sizes=[8, 16], embedding_size=8)


def make_config(**kwargs):
    defaults = dict(projection_hidden_dim=32, projection_dim=16, queue_size=32, num_hard_negatives=8,
                    num_mixed_negatives=6, num_query_mixes=4, mixing_start_step=0)
    defaults.update(kwargs)
    return MoCHiConfig(backbone_config=dict(TINY_RESNET), image_size=32, **defaults)


def make_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return MoCHiForSelfSupervisedPretraining(make_config(**kwargs))


def make_views(batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 32, 32, generator=g) for _ in range(2)]


def bn_eval(model):
    """Train mode (queue updates) with per-sample BatchNorm (running statistics): forwards are row-independent."""
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    return model


def test_paper_defaults():
    cfg = MoCHiConfig()
    assert cfg.queue_size == 65536 and cfg.contrastive_temperature == 0.2 and cfg.teacher_momentum == 0.999
    assert cfg.projection_dim == 128 and cfg.query_mix_max == 0.5 and cfg.shuffle_bn
    assert (cfg.num_hard_negatives, cfg.num_mixed_negatives, cfg.num_query_mixes) == (1024, 512, 256)
    assert cfg.default_augmentation["crop_scale"] == [0.2, 1.0] and cfg.model_type == "hf_ssl_mochi"


def test_key_encoder_starts_as_copy_and_ema_formula_exact():
    model = make_model()
    for t, s in zip(model.teacher_encoder.parameters(), model.encoder.parameters()):
        assert torch.equal(t, s) and not t.requires_grad
    for t, s in zip(model.teacher_projection_head.parameters(), model.projection_head.parameters()):
        assert torch.equal(t, s) and not t.requires_grad
    with torch.no_grad():
        for p in list(model.encoder.parameters()) + list(model.projection_head.parameters()):
            p.add_(torch.randn_like(p))
    t_before = [p.clone() for p in model.teacher_encoder.parameters()] + \
        [p.clone() for p in model.teacher_projection_head.parameters()]
    s_now = [p.clone() for p in model.encoder.parameters()] + [p.clone() for p in model.projection_head.parameters()]
    model.on_step_end(3, 10)
    t_after = list(model.teacher_encoder.parameters()) + list(model.teacher_projection_head.parameters())
    m = model.config.teacher_momentum
    for t0, s, t1 in zip(t_before, s_now, t_after):
        assert torch.allclose(t1, m * t0 + (1 - m) * s, atol=1e-6)
    assert int(model.optimizer_step) == 3


def test_no_gradient_into_key_encoder_or_queue():
    model = make_model().train()
    out = model(pixel_values=make_views())
    out.loss.backward()
    assert all(p.grad is None for p in model.teacher_encoder.parameters())
    assert all(p.grad is None for p in model.teacher_projection_head.parameters())
    assert not model.queue.requires_grad
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


def test_loss_equals_infonce_on_logits_with_temperature():
    model = bn_eval(make_model(mixing_start_step=10**6))  # plain MoCo v2
    views = make_views()
    queue_before = model.queue.clone()
    out = model(pixel_values=views)
    with torch.no_grad():
        q = F.normalize(model.projection_head(encode(model.encoder, views[0], "cls")), dim=1)
        k = F.normalize(model.teacher_projection_head(encode(model.teacher_encoder, views[1], "cls")), dim=1)
    expected = torch.cat([(q * k).sum(1, keepdim=True), q @ queue_before.t()], dim=1)
    assert out.logits.shape == (4, 1 + 32)
    assert torch.allclose(out.logits, expected, atol=1e-5)
    ref = -torch.log_softmax(expected / 0.2, dim=1)[:, 0].mean()
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert out.metrics["mixing_active"].item() == 0.0


def test_queue_fifo_order_and_pointer_wrap():
    model = bn_eval(make_model(queue_size=12, num_hard_negatives=4, shuffle_bn=False))
    initial = model.queue.clone()
    keys_seen = []
    for step in range(4):
        views = make_views(batch=4, seed=step)
        with torch.no_grad():
            k = model.key(views[1])
        keys_seen.append(k)
        model(pixel_values=views)
        assert int(model.queue_ptr) == (4 * (step + 1)) % 12
        if step == 0:
            assert torch.allclose(model.queue[:4], k, atol=1e-6) and torch.equal(model.queue[4:], initial[4:])
    # after 4 batches of 4 in a 12-slot queue: slots 0-3 hold batch 3 (wrapped), 4-7 batch 1, 8-11 batch 2
    assert torch.allclose(model.queue[0:4], keys_seen[3], atol=1e-6)
    assert torch.allclose(model.queue[4:8], keys_seen[1], atol=1e-6)
    assert torch.allclose(model.queue[8:12], keys_seen[2], atol=1e-6)
    # eval mode never touches the queue; a non-dividing regular batch is rejected
    model.eval()
    q_before = model.queue.clone()
    model(pixel_values=make_views(batch=4, seed=9))
    assert torch.equal(model.queue, q_before)
    with pytest.raises(ValueError, match="divisible"):
        bn_eval(make_model(queue_size=10, num_hard_negatives=4))(pixel_values=make_views(batch=4))


def test_shuffle_bn_single_process_keys_match_unshuffled_in_eval_bn():
    model = bn_eval(make_model())
    views = make_views(batch=6)
    with torch.no_grad():
        assert torch.allclose(model.shuffled_keys(views[1]), model.key(views[1]), atol=1e-6)
    # in train-mode BN the permutation is undone: the key of image i is still row i (permutation-equivariant BN)
    model.train()
    with torch.no_grad():
        assert torch.allclose(model.shuffled_keys(views[1]), model.key(views[1]), atol=1e-5)


def test_hard_negatives_are_topn_by_similarity():
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(3, 8, generator=g), dim=1)
    queue = F.normalize(torch.randn(20, 8, generator=g), dim=1)
    idx, hard = hard_negatives(q, queue, 5)
    sims = q @ queue.t()
    for i in range(3):
        order = sims[i].argsort(descending=True)[:5]
        assert torch.equal(idx[i], order)
        assert torch.equal(hard[i], queue[order])


def test_mixing_formula_convex_normalised_and_detached():
    g = torch.Generator().manual_seed(1)
    q = F.normalize(torch.randn(2, 8, generator=g), dim=1).requires_grad_(True)
    hard = F.normalize(torch.randn(2, 5, 8, generator=g), dim=2)
    pair = torch.randint(5, (2, 3, 2), generator=g)
    alpha = torch.rand(2, 3, generator=g)
    qidx = torch.randint(5, (2, 2), generator=g)
    beta = torch.rand(2, 2, generator=g) * 0.5
    out = mix_hard_negatives(q, hard, pair, alpha, qidx, beta)
    assert out.shape == (2, 5, 8) and not out.requires_grad
    assert torch.allclose(out.norm(dim=2), torch.ones(2, 5), atol=1e-6)
    for i in range(2):
        for s in range(3):
            ref = alpha[i, s] * hard[i, pair[i, s, 0]] + (1 - alpha[i, s]) * hard[i, pair[i, s, 1]]
            assert torch.allclose(out[i, s], ref / ref.norm(), atol=1e-6)
        for s in range(2):
            ref = beta[i, s] * q[i].detach() + (1 - beta[i, s]) * hard[i, qidx[i, s]]
            assert torch.allclose(out[i, 3 + s], ref / ref.norm(), atol=1e-6)


def test_forward_with_mixing_synthetic_logits_and_not_enqueued(monkeypatch):
    model = bn_eval(make_model())
    captured = {}
    original = model.synthesize

    def spy(q, queue):
        captured["q"], captured["queue"] = q.detach().clone(), queue.clone()
        captured["syn"] = original(q, queue)
        return captured["syn"]

    monkeypatch.setattr(model, "synthesize", spy)
    # record the draws of the mixing generator
    draws = {}
    orig_mix = __import__("hf_ssl.modeling.mochi.modeling_mochi", fromlist=["x"]).mix_hard_negatives

    def mix_spy(query, hard, pair_index, alpha, query_index, beta):
        draws.update(hard=hard, pair=pair_index, alpha=alpha, qidx=query_index, beta=beta)
        return orig_mix(query, hard, pair_index, alpha, query_index, beta)

    monkeypatch.setattr("hf_ssl.modeling.mochi.modeling_mochi.mix_hard_negatives", mix_spy)
    views = make_views()
    with torch.no_grad():
        k = model.key(views[1])
    out = model(pixel_values=views)
    s, s2, n_hard = 6, 4, 8
    assert out.logits.shape == (4, 1 + 32 + s + s2) and out.metrics["mixing_active"].item() == 1.0
    assert draws["hard"].shape == (4, n_hard, 16)
    assert 0 <= float(draws["alpha"].min()) and float(draws["alpha"].max()) <= 1
    assert 0 <= float(draws["beta"].min()) and float(draws["beta"].max()) < 0.5
    assert int(draws["pair"].max()) < n_hard and int(draws["qidx"].max()) < n_hard
    syn = captured["syn"]
    assert not syn.requires_grad and syn.shape == (4, s + s2, 16)
    expected_syn_logits = torch.bmm(syn, captured["q"].unsqueeze(2)).squeeze(2)
    assert torch.allclose(out.logits[:, 33:], expected_syn_logits, atol=1e-6)
    # InfoNCE over [pos, queue, synthetic] / T
    ref = F.cross_entropy(out.logits / 0.2, torch.zeros(4, dtype=torch.long))
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5)
    # only the real keys are enqueued
    assert torch.allclose(model.queue[:4], k, atol=1e-6)
    assert torch.equal(model.queue[4:], captured["queue"][4:])
    # gradient flows only through q: the synthetic logits' gradient equals the one through q with syn fixed
    out.loss.backward()
    assert all(p.grad is None for p in model.teacher_encoder.parameters())


def test_mixing_warmup_gate():
    model = bn_eval(make_model(mixing_start_step=5))
    assert model(pixel_values=make_views()).logits.shape[1] == 33
    model.on_step_end(5, 10)
    assert model(pixel_values=make_views(seed=1)).logits.shape[1] == 33 + 10


# ---------------------------------------------------------------------------------------------------- DDP
DDP_BATCH = 8


def _ddp_run(model, rows):
    records = {"loss": [], "logits": [], "grad": []}
    for step in range(3):
        views = [v[rows] for v in make_views(DDP_BATCH, seed=20 + step)]
        model.zero_grad()
        out = model(pixel_values=views)
        out.loss.backward()
        records["loss"].append(out.loss.item())
        records["logits"].append(out.logits.clone())
        records["grad"].append(next(model.projection_head.parameters()).grad.clone())
        model.on_step_end(step + 1, 10)
    records["queue"] = model.queue.clone()
    records["ptr"] = int(model.queue_ptr)
    return records


def _ddp_model():
    return bn_eval(make_model(seed=5, queue_size=32, num_hard_negatives=8, mixing_start_step=1))


def _ddp_worker(rank, world_size, out_dir):
    torch.set_num_threads(1)
    per = DDP_BATCH // world_size
    torch.save(_ddp_run(_ddp_model(), slice(rank * per, (rank + 1) * per)), os.path.join(out_dir, f"rank{rank}.pt"))


def test_ddp_two_processes_match_single_process(tmp_path):
    from ddp_utils import run_distributed

    run_distributed(_ddp_worker, tmp_path, str(tmp_path), world_size=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    single = _ddp_run(_ddp_model(), slice(None))
    # gathered keys enqueued identically (rank order == batch order), same pointer, identical on both ranks
    assert torch.equal(ranks[0]["queue"], ranks[1]["queue"])
    assert torch.allclose(ranks[0]["queue"], single["queue"], atol=1e-5)
    assert ranks[0]["ptr"] == ranks[1]["ptr"] == single["ptr"] == (3 * DDP_BATCH) % 32
    for step in range(3):  # steps 2 and 3 use hard negative mixing (draws made for the global batch)
        assert torch.allclose(torch.cat([ranks[0]["logits"][step], ranks[1]["logits"][step]]),
                              single["logits"][step], atol=1e-5)
        assert (ranks[0]["loss"][step] + ranks[1]["loss"][step]) / 2 == pytest.approx(single["loss"][step], rel=1e-5)
        # DDP averages gradients over processes == full-batch gradient
        assert torch.allclose((ranks[0]["grad"][step] + ranks[1]["grad"][step]) / 2, single["grad"][step], atol=1e-5)
    assert single["logits"][2].shape[1] == 1 + 32 + 6 + 4


# ---------------------------------------------------------------------------------------------------- misc
def test_tiny_trainer_run_and_save_load(tmp_path):
    from transformers import AutoModel

    from hf_ssl.training.arguments import SSLTrainingArguments
    from hf_ssl.training.data import SSLViewDataset, build_view_generator, load_image_stream
    from hf_ssl.training.trainer import SSLTrainer

    model = make_model(queue_size=16, mixing_start_step=1).train()
    before = [p.detach().clone() for p in model.encoder.parameters()]
    t_before = [p.detach().clone() for p in model.teacher_encoder.parameters()]
    ds = SSLViewDataset(load_image_stream("builtin:digits", shuffle_buffer=32), build_view_generator(model.config))
    args = SSLTrainingArguments(output_dir=str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=4,
                                learning_rate=1e-3, logging_steps=1, save_strategy="no", disable_tqdm=True,
                                report_to=[])
    trainer = SSLTrainer(model=model, args=args, train_dataset=ds)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs and all(math.isfinite(h["loss"]) for h in logs)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.encoder.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(t_before, model.teacher_encoder.parameters()))
    assert int(model.queue_ptr) == 12 and int(model.optimizer_step) == 3 and model.mixing_active()

    model.eval().save_pretrained(tmp_path / "ckpt")
    MoCHiImageProcessor.from_ssl_config(model.config).save_pretrained(tmp_path / "ckpt")
    loaded = AutoModel.from_pretrained(tmp_path / "ckpt")
    assert isinstance(loaded, MoCHiForSelfSupervisedPretraining)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    assert not any(p.requires_grad for p in loaded.teacher_encoder.parameters())


@pytest.mark.parametrize("kwargs,match", [
    (dict(contrastive_temperature=-0.1), "contrastive_temperature"),
    (dict(teacher_momentum=1.5), "teacher_momentum"),
    (dict(queue_size=8, num_hard_negatives=16), "num_hard_negatives"),
    (dict(query_mix_max=0.0), "query_mix_max"),
    (dict(num_mixed_negatives=-1), "num_mixed_negatives"),
])
def test_nonsense_configs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_config(**kwargs)


def test_bad_inputs_raise_clearly():
    model = make_model().train()
    with pytest.raises(ValueError):
        model(pixel_values=[torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)])
    with pytest.raises(ValueError, match="2 views"):
        model(pixel_values=make_views()[:1])
    with pytest.raises(ValueError, match="same batch size"):
        model(pixel_values=[torch.randn(2, 3, 32, 32), torch.randn(3, 3, 32, 32)])


def test_cpu_demo_preset_is_valid():
    preset = METHOD.presets["cpu-demo"]
    cfg = MoCHiConfig(**preset)
    assert cfg.queue_size >= cfg.num_hard_negatives and METHOD.family == "contrastive"
