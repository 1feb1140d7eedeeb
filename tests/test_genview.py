"""GenView invariants: quality-driven weights, MoCo v3 loss, momentum branch, adaptive generation, DDP equivalence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import hf_ssl  # noqa: F401
from hf_ssl.modeling.genview import METHOD, GenViewConfig, GenViewForSelfSupervisedPretraining
from hf_ssl.modeling.genview.generators import diffusion_like_variation
from hf_ssl.modeling.genview.modeling_genview import foreground_maps, quality_weights
from hf_ssl.modeling.genview.views_genview import adaptive_noise_level, foreground_ratio, load_generator
from hf_ssl.modeling.momentum import cosine_schedule
from hf_ssl.training.data import SSLDataCollator, build_view_generator
from ddp_utils import (assert_ddp_matches_single, forward_backward, rank_rows, run_ranks, save_rank,
                       shard_forward_backward)

TINY_VIT = dict(model_type="vit", hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                patch_size=8)


def make_config(**kwargs):
    for k, v in dict(projection_hidden_dim=32, projection_dim=16, predictor_hidden_dim=32, image_size=32,
                     contrastive_temperature=0.2).items():
        kwargs.setdefault(k, v)
    return GenViewConfig(backbone_config=dict(TINY_VIT), **kwargs)


def make_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return GenViewForSelfSupervisedPretraining(make_config(**kwargs))


def views(batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 32, 32, generator=g), torch.randn(batch, 3, 32, 32, generator=g)]


def test_paper_defaults():
    c = GenViewConfig()
    assert (c.projection_hidden_dim, c.projection_dim, c.predictor_hidden_dim) == (4096, 256, 4096)
    assert c.contrastive_temperature == 1.0 and c.teacher_momentum == 0.99 and c.quality_gamma == 1.0
    assert c.augmentation["noise_levels"] == [0, 100, 200, 300, 400]
    assert c.augmentation["view_gaussian_blur"] == [1.0, 0.1] and c.augmentation["view_solarize"] == [0.0, 0.2]


@pytest.mark.parametrize("kwargs, message", [
    (dict(contrastive_temperature=-0.1), "contrastive_temperature"),
    (dict(quality_scorer="clip"), "quality_scorer"),
    (dict(quality_gamma=-1.0), "quality_gamma"),
    (dict(augmentation={"noise_levels": [0, 100], "foreground_thresholds": [0.1, 0.2]}), "one more entry"),
    (dict(augmentation={"generator": "not_a_path"}), "import path"),
])
def test_nonsense_configs_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_config(**kwargs)


def test_foreground_maps_and_quality_weights_by_hand():
    d = 4
    direction = F.normalize(torch.tensor([1.0, 0.0, 0.0, 0.0]), dim=0)
    # 4 tokens: 2 foreground (large first coordinate), 2 background
    fg_tok = torch.tensor([[5.0, 1.0, 0.0, 0.0], [4.0, 1.0, 0.0, 0.0]])
    bg_a = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    bg_b = torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    t1 = torch.stack([torch.cat([fg_tok, bg_a]), torch.cat([fg_tok, bg_a])])
    # pair 0: same object, different background (good view); pair 1: different object, same background (bad view)
    t2 = torch.stack([torch.cat([fg_tok, bg_b]), torch.cat([torch.tensor([[0.0, 5.0, 0.0, 0.0], [0.0, 4.0, 0.0,
                                                                                                  0.0]]), bg_a])])
    fg, bg = foreground_maps(t1, direction)
    assert torch.allclose(fg.sum(1), torch.ones(2)) and torch.allclose(bg.sum(1), torch.ones(2))
    proj = t1 @ direction
    raw = (proj - proj.min(1, keepdim=True).values) / (proj.max(1, keepdim=True).values - proj.min(1, keepdim=True).values + 1e-7)
    torch.testing.assert_close(fg, raw / raw.sum(1, keepdim=True))
    weight, score, sim_fg, sim_bg = quality_weights(t1, t2, direction, gamma=1.0)
    manual_score = torch.exp(sim_fg - sim_bg)
    torch.testing.assert_close(score, manual_score)
    torch.testing.assert_close(weight, manual_score / manual_score.sum() * 2)
    assert weight.mean().item() == pytest.approx(1.0)
    assert weight[0] > 1.0 > weight[1]  # the shared-object pair counts more than the shared-background pair
    assert not weight.requires_grad


def test_moco_v3_loss_by_hand_and_weighting():
    model = make_model()
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(4, 16, generator=g), torch.randn(4, 16, generator=g)
    tau = 0.2
    logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).t() / tau
    ce = F.cross_entropy(logits, torch.arange(4), reduction="none")
    assert model.contrastive_loss(q, k, None).item() == pytest.approx((2 * tau * ce.mean()).item(), rel=1e-6)
    w = torch.tensor([2.0, 1.0, 0.5, 0.5])
    assert model.contrastive_loss(q, k, w).item() == pytest.approx((2 * tau * (w * ce).mean()).item(), rel=1e-6)


def test_momentum_branch_gets_no_gradient_and_follows_the_cosine_ema():
    model = make_model().train()
    out = model(pixel_values=views())
    out.loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("teacher_"))
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith("teacher_"))
    assert model.encoder.embeddings.patch_embeddings.projection.weight.grad is not None
    # starts as a copy of the online branch
    for t, s in zip(model.teacher_encoder.parameters(), model.encoder.parameters()):
        assert torch.equal(t, s)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(0.1)
    before_t = [p.clone() for p in model.teacher_encoder.parameters()]
    model.on_step_end(3, 10)
    m = cosine_schedule(3, 10, 0.99, 1.0)
    for t0, t, s in zip(before_t, model.teacher_encoder.parameters(), model.encoder.parameters()):
        torch.testing.assert_close(t, m * t0 + (1 - m) * s)
    assert model.teacher_momentum_now.item() == pytest.approx(m)


def test_online_foreground_direction_prefers_central_tokens():
    model = make_model().train()
    # tokens on a 4x4 grid: the central 2x2 block carries direction e0 strongly, the border carries noise
    g = torch.Generator().manual_seed(0)
    tokens = 0.1 * torch.randn(8, 16, 32, generator=g)
    centre = torch.zeros(16, dtype=torch.bool)
    centre[[5, 6, 9, 10]] = True
    tokens[:, centre, 0] += 3.0 + torch.rand(8, 4, generator=g)
    direction = model.update_foreground_direction(tokens, iterations=10)
    assert direction[0] > 0.9  # principal direction, signed towards the centre
    assert model.foreground_direction.norm().item() == pytest.approx(1.0, abs=1e-5)


def test_external_scorer_is_used_and_required():
    model = make_model(quality_scorer="external").train()
    with pytest.raises(ValueError, match="set_quality_scorer"):
        model(pixel_values=views())
    calls = []

    def scorer(x):
        calls.append(x.shape)
        return x.unfold(2, 8, 8).unfold(3, 8, 8).mean((-1, -2)).flatten(2).transpose(1, 2)  # [B, 16, 3]

    model.set_quality_scorer(scorer)
    model.set_foreground_direction(torch.tensor([1.0, 0.0, 0.0]))
    out = model(pixel_values=views())
    assert len(calls) == 2 and "quality_score" in out.metrics and torch.isfinite(out.loss)


def test_adaptive_noise_level_and_foreground_ratio():
    thresholds, levels = [0.1, 0.2, 0.3, 0.4], [0, 100, 200, 300, 400]
    assert [adaptive_noise_level(r, thresholds, levels) for r in (0.0, 0.15, 0.25, 0.35, 0.9)] == levels
    assert foreground_ratio(Image.new("RGB", (40, 40), (10, 20, 30))) == 0.0
    img = Image.new("RGB", (40, 40), (0, 0, 0))
    img.paste((250, 250, 250), (10, 10, 30, 30))  # a centred square covering 25% of the image
    assert foreground_ratio(img) == pytest.approx(0.25, abs=0.02)


def test_generator_plumbing():
    rng = np.random.default_rng(0)
    img = Image.fromarray((np.random.default_rng(1).random((32, 32, 3)) * 255).astype("uint8"))
    assert np.array_equal(np.asarray(diffusion_like_variation(img, 0, rng)), np.asarray(img))
    weak = np.asarray(diffusion_like_variation(img, 100, np.random.default_rng(0)), dtype=float)
    strong = np.asarray(diffusion_like_variation(img, 400, np.random.default_rng(0)), dtype=float)
    base = np.asarray(img, dtype=float)
    assert np.abs(weak - base).mean() < np.abs(strong - base).mean()
    with pytest.raises(ValueError, match="Cannot import"):
        load_generator("hf_ssl.nowhere:fn")
    # the policy feeds the generated image to view 2 only
    config = make_config(augmentation={"generator": "tests_genview_helpers:constant_generator", "color_jitter": 0.0,
                                       "grayscale": 0.0, "view_gaussian_blur": [0.0, 0.0], "horizontal_flip": 0.0})
    policy = build_view_generator(config)
    batch = SSLDataCollator()([policy(img, np.random.default_rng(i)) for i in range(3)])
    v1, v2 = batch["pixel_values"]
    assert batch["generated_view"].tolist() == [1, 1, 1]
    assert torch.allclose(v2, v2[:, :, :1, :1].expand_as(v2)) and not torch.allclose(v1, v1[:, :, :1, :1].expand_as(v1))


def _ddp_worker(rank, world_size, out_dir):
    model = make_model().eval()
    model.set_foreground_direction(F.normalize(torch.arange(1.0, 33.0), dim=0))
    x = views(batch=4)
    out, grads = shard_forward_backward(model, {"pixel_values": [x[0], x[1]]}, rank, world_size, average_grads=False)
    tokens = torch.randn(4, 16, 32, generator=torch.Generator().manual_seed(5))
    model.train()
    direction = model.update_foreground_direction(tokens[rank_rows(4, rank, world_size)])
    save_rank(out_dir, rank, loss=out.loss.detach(), grads=grads, direction=direction)


def test_ddp_two_processes_match_single_process(tmp_path):
    ranks = run_ranks(_ddp_worker, tmp_path)
    model = make_model().eval()
    model.set_foreground_direction(F.normalize(torch.arange(1.0, 33.0), dim=0))
    out = forward_backward(model, {"pixel_values": views(batch=4)})
    # keys gathered from every process + globally normalised quality weights: mean of the per-process losses
    # (what DDP's gradient averaging optimises) equals the single-process loss, and so do the averaged gradients
    assert_ddp_matches_single(ranks, out.loss, model, atol=1e-5, rtol=1e-4, grads_averaged=False)
    model.train()
    direction = model.update_foreground_direction(torch.randn(4, 16, 32, generator=torch.Generator().manual_seed(5)))
    torch.testing.assert_close(ranks[0]["direction"], direction, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ranks[1]["direction"], direction, atol=1e-5, rtol=1e-4)


def test_tiny_training_run(tmp_path):
    from hf_ssl.training.arguments import SSLTrainingArguments
    from hf_ssl.training.data import SSLViewDataset, load_image_stream
    from hf_ssl.training.trainer import SSLTrainer

    config = METHOD.make_config("cpu-demo", backbone_config=dict(TINY_VIT), projection_hidden_dim=32,
                                projection_dim=16, predictor_hidden_dim=32)
    torch.manual_seed(0)
    model = GenViewForSelfSupervisedPretraining(config)
    train = SSLViewDataset(load_image_stream("builtin:digits", shuffle_buffer=16), build_view_generator(config))
    args = SSLTrainingArguments(output_dir=str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=8,
                                learning_rate=1e-3, logging_steps=1, save_strategy="no", disable_tqdm=True)
    trainer = SSLTrainer(model=model, args=args, train_dataset=train)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3 and all(np.isfinite(h["loss"]) for h in logs)
    assert all(h["generated_fraction"] == 1.0 for h in logs) and all("quality_score" in h for h in logs)
    assert model.foreground_direction.norm().item() == pytest.approx(1.0, abs=1e-4)
