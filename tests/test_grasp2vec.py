"""Grasp2Vec: n-pairs loss vs a hand reference, the bidirectional objective, the heatmap peak on the removed object,
the simulated-grasp views, DDP-gathered negatives (2 processes), tiny training run and save/load."""

import numpy as np
import pytest
import torch

import hf_ssl  # noqa: F401
from hf_ssl.modeling.grasp2vec import (METHOD, Grasp2VecConfig, Grasp2VecForSelfSupervisedPretraining,
                                       grasp2vec_heatmap, heatmap_argmax_in_box, npairs_loss)
from hf_ssl.modeling.grasp2vec.views_grasp2vec import SimulatedGraspPolicy, place_boxes
from ddp_utils import assert_ddp_matches_single, forward_backward, run_ranks, save_rank, shard_forward_backward
from tiny_configs import TINY_CONFIGS, tiny_config
from train_utils import tiny_training_run


def make_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return Grasp2VecForSelfSupervisedPretraining(tiny_config("grasp2vec", **overrides))


def make_batch(n=8, seed=0, scene=32):
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(n, 3, 32, 32, generator=g),
            "pre_grasp_pixel_values": torch.randn(n, 3, scene, scene, generator=g),
            "post_grasp_pixel_values": torch.randn(n, 3, scene, scene, generator=g)}


# ----------------------------------------------------------------------------------------------------
# n-pairs loss
# ----------------------------------------------------------------------------------------------------
def _hand_npairs(a, p, lam):
    n = len(a)
    sim = a @ p.T
    xent = np.mean([-(sim[i, i] - np.log(np.exp(sim[i]).sum())) for i in range(n)])
    reg = 0.25 * lam * ((a ** 2).sum(1).mean() + (p ** 2).sum(1).mean())
    return xent + reg


def test_npairs_equals_hand_reference():
    rng = np.random.default_rng(0)
    a, p = rng.normal(size=(5, 6)), rng.normal(size=(5, 6))
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    loss, logits = npairs_loss(t(a), t(p), reg_lambda=0.002)
    assert loss.item() == pytest.approx(_hand_npairs(a, p, 0.002), rel=1e-6)
    assert logits.shape == (5, 5) and np.allclose(logits.numpy(), a @ p.T)
    # not symmetric in general: the two directions are different losses
    reverse, _ = npairs_loss(t(p), t(a), reg_lambda=0.002)
    assert reverse.item() == pytest.approx(_hand_npairs(p, a, 0.002), rel=1e-6)
    assert reverse.item() != pytest.approx(loss.item(), rel=1e-3)
    # the penalty: lambda = 0 leaves the pure cross entropy; no normalisation (scaling changes the loss)
    plain, _ = npairs_loss(t(a), t(p), reg_lambda=0.0)
    assert plain.item() == pytest.approx(_hand_npairs(a, p, 0.0), rel=1e-6)
    scaled, _ = npairs_loss(t(2 * a), t(p), reg_lambda=0.0)
    assert scaled.item() != pytest.approx(plain.item(), rel=1e-3)
    with pytest.raises(ValueError, match="anchor"):
        npairs_loss(t(a), t(p[:3]))


def test_model_loss_is_bidirectional_npairs_of_scene_difference():
    model = make_model().eval()
    batch = make_batch()
    out = model(**batch)
    with torch.no_grad():
        goal = model.embed_object(batch["pixel_values"])
        pre, _ = model.embed_scene(batch["pre_grasp_pixel_values"])
        post, _ = model.embed_scene(batch["post_grasp_pixel_values"])
    d = (pre - post).double().numpy()
    o = goal.double().numpy()
    expected = _hand_npairs(d, o, 0.002) + _hand_npairs(o, d, 0.002)
    assert out.loss.item() == pytest.approx(expected, rel=1e-4)
    # phi_o is the ReLU + spatial mean of the exported encoder's last feature map = its pooled output
    assert torch.allclose(goal, model.get_image_features(batch["pixel_values"]), atol=1e-6)
    assert (goal >= 0).all()
    # non-negativity option: ReLU on the difference
    model.config.non_negativity_constraint = True
    nn_out = model(**batch)
    dr = np.maximum(d, 0)
    assert nn_out.loss.item() == pytest.approx(_hand_npairs(dr, o, 0.002) + _hand_npairs(o, dr, 0.002), rel=1e-4)


def test_gradients_reach_both_encoders_and_post_scene():
    model = make_model().train()
    batch = {k: v.requires_grad_(True) for k, v in make_batch().items()}
    model(**batch).loss.backward()
    for enc in (model.encoder, model.scene_encoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())
    for key in ("pixel_values", "pre_grasp_pixel_values", "post_grasp_pixel_values"):
        assert batch[key].grad is not None and batch[key].grad.abs().sum() > 0, key


# ----------------------------------------------------------------------------------------------------
# heatmap
# ----------------------------------------------------------------------------------------------------
def test_heatmap_function_on_constructed_features():
    spatial = torch.zeros(2, 4, 5, 6)
    spatial[0, :, 1, 4] = torch.tensor([1.0, 2.0, 0.0, 0.0])  # the object's feature at (1, 4)
    spatial[0, :, 3, 0] = torch.tensor([0.0, 0.0, 3.0, 0.0])  # another object
    spatial[1, :, 4, 2] = torch.tensor([0.0, 0.0, 0.0, 1.0])
    query = torch.tensor([[1.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]])
    heat = grasp2vec_heatmap(spatial, query)
    assert heat.shape == (2, 5, 6) and heat[0, 1, 4] == 5.0 and heat[0, 3, 0] == 0.0 and heat[1, 4, 2] == 2.0
    assert tuple(np.unravel_index(int(heat[0].argmax()), (5, 6))) == (1, 4)
    boxes = torch.tensor([[4 / 6, 1 / 5, 5 / 6, 2 / 5], [0.0, 0.0, 0.5, 0.5]])
    assert heatmap_argmax_in_box(heat, boxes).tolist() == [True, False]


def test_heatmap_peaks_on_the_removed_object():
    """A constructed scene: zero background (mean 0 / std 1 normalisation), eval-mode BatchNorm and identical phi_s
    / phi_o weights, so features vanish away from the objects; the heatmap of the grasped (removed) object peaks
    inside its box, not on the object that stays."""
    model = make_model(scene_size=64, image_mean=[0.0] * 3, image_std=[1.0] * 3).eval()
    model.scene_encoder.load_state_dict(model.encoder.state_dict())
    rng = np.random.default_rng(0)
    obj = np.zeros((16, 16, 3), np.float32)
    obj[2:14, 6:10] = 1.0  # a bright bar
    other = np.zeros((16, 16, 3), np.float32)
    other[7:9, 1:15] = 0.6 + 0.2 * rng.random((2, 14, 1))  # a different, dimmer shape
    pre = np.zeros((64, 64, 3), np.float32)
    pre[40:56, 8:24] = obj  # grasped object: box x 8-24, y 40-56
    pre[8:24, 40:56] = other
    post = pre.copy()
    post[40:56, 8:24] = 0.0
    t = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None]  # noqa: E731
    outcome = np.zeros((32, 32, 3), np.float32)
    outcome[8:24, 8:24] = obj
    heat = model.localization_heatmap(t(pre), t(outcome))[0]
    h, w = heat.shape
    iy, ix = np.unravel_index(int(heat.argmax()), (h, w))
    cx, cy = (ix + 0.5) / w, (iy + 0.5) / h
    cell = 1 / w  # random-init receptive fields blur by up to one cell: the box grown by one cell
    assert 8 / 64 - cell <= cx <= 24 / 64 + cell and 40 / 64 - cell <= cy <= 56 / 64 + cell, (iy, ix, heat)
    # and it is far from the object that stays in the bin (x 40-56, y 8-24)
    assert heat[iy, ix] > heat[: h // 2, w // 2:].max()
    # after the grasp the response at the object's place drops
    post_heat = model.localization_heatmap(t(post), t(outcome))[0]
    assert post_heat[iy, ix] < heat[iy, ix]
    up = model.localization_heatmap(t(pre), t(outcome), upsample=True)
    assert up.shape == (1, 64, 64)


# ----------------------------------------------------------------------------------------------------
# simulated grasps
# ----------------------------------------------------------------------------------------------------
def test_simulated_grasp_views():
    from PIL import Image

    config = tiny_config("grasp2vec", scene_size=64, image_mean=[0.0] * 3, image_std=[1.0] * 3,
                         augmentation={"objects_per_scene": [3, 3], "background_noise": 0.0,
                                       "horizontal_flip": 0.0, "vertical_flip": 0.0})
    policy = SimulatedGraspPolicy(config)
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(np.full((32, 32, 3), 60 * (i + 1), np.uint8)) for i in range(4)]
    for img in imgs[:3]:
        policy(img, rng)  # fill the buffer with other objects
    out = policy(imgs[3], rng)
    pre, post = out["pre_grasp_pixel_values"], out["post_grasp_pixel_values"]
    assert pre.shape == post.shape == (3, 64, 64) and out["pixel_values"].shape == (3, 32, 32)
    x0, y0, x1, y1 = (out["grasp_box"] * 64).round().long().tolist()
    # the grasped object (value 240) is in the pre scene inside its box and gone from the post scene
    assert torch.allclose(pre[:, y0:y1, x0:x1], torch.full((3, y1 - y0, x1 - x0), 240 / 255), atol=1e-6)
    assert not torch.isclose(post, torch.tensor(240 / 255)).any()
    # everything else is unchanged: exactly the grasped object's pixels differ
    diff = (pre != post).any(0)
    assert diff.sum().item() == (x1 - x0) * (y1 - y0) and diff[y0:y1, x0:x1].all()
    assert (post > 0).any()  # the other objects stay in the bin
    assert torch.allclose(out["pixel_values"], torch.full((3, 32, 32), 240 / 255), atol=1e-6)
    # placement avoids overlaps when there is room
    boxes = place_boxes([16, 16, 16], 64, np.random.default_rng(1))
    for i in range(3):
        for j in range(i):
            a, b = boxes[i], boxes[j]
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_flipped_box_follows_the_pre_scene():
    from PIL import Image

    config = tiny_config("grasp2vec", scene_size=64, image_mean=[0.0] * 3, image_std=[1.0] * 3,
                         augmentation={"objects_per_scene": [1, 1], "background_noise": 0.0,
                                       "horizontal_flip": 1.0, "vertical_flip": 1.0})
    out = SimulatedGraspPolicy(config)(Image.fromarray(np.full((32, 32, 3), 200, np.uint8)), np.random.default_rng(3))
    x0, y0, x1, y1 = (out["grasp_box"] * 64).round().long().tolist()
    pre = out["pre_grasp_pixel_values"]
    assert (pre[:, y0:y1, x0:x1] > 0.7).all() and (pre > 0.7).sum() == 3 * (x1 - x0) * (y1 - y0)


def test_config_validation_and_defaults():
    cfg = Grasp2VecConfig()
    assert cfg.backbone_config.depths == [3, 4, 6] and cfg.backbone_config.hidden_sizes[-1] == 1024
    assert cfg.scene_backbone_config.depths == [3, 4, 6] and cfg.image_size == cfg.scene_size == 472
    assert cfg.npairs_reg_lambda == 0.002 and cfg.augmentation["vertical_flip"] == 0.5
    base = TINY_CONFIGS["grasp2vec"]
    for bad in ({"npairs_reg_lambda": -1.0}, {"scene_size": 0}, {"augmentation": {"objects_per_scene": [0, 2]}},
                {"augmentation": {"object_scale": [0.5, 1.5]}}, {"augmentation": {"vertical_flip": 2.0}},
                {"scene_backbone_config": dict(base["backbone_config"], num_channels=1)}):
        with pytest.raises(ValueError):
            Grasp2VecConfig(**{**base, **bad})


def test_bad_inputs_raise():
    model = make_model()
    batch = make_batch(n=2)
    with pytest.raises(ValueError, match="pre_grasp"):
        model(pixel_values=batch["pixel_values"])
    with pytest.raises(ValueError, match="same shape"):
        model(**{**batch, "post_grasp_pixel_values": batch["post_grasp_pixel_values"][:1]})
    with pytest.raises(ValueError, match="channels"):
        model(**{**batch, "pre_grasp_pixel_values": torch.randn(2, 4, 32, 32),
                 "post_grasp_pixel_values": torch.randn(2, 4, 32, 32)})


# ----------------------------------------------------------------------------------------------------
# DDP: gathered negatives
# ----------------------------------------------------------------------------------------------------
def _ddp_worker(rank, world_size, out_dir):
    model = make_model().eval()  # eval: BatchNorm uses running stats, so the only cross-sample term is the loss
    out, grads = shard_forward_backward(model, make_batch(n=8, seed=1), rank, world_size)
    save_rank(out_dir, rank, loss=out.loss.item(), logits=out.logits, grads=grads)


def test_ddp_gathered_negatives_equal_single_process(tmp_path):
    ranks = run_ranks(_ddp_worker, tmp_path)
    model = make_model().eval()
    out = forward_backward(model, make_batch(n=8, seed=1))
    assert_ddp_matches_single(ranks, out.loss, model, atol=1e-5, rtol=1e-4)
    assert ranks[0]["logits"].shape == (4, 8)  # every process scores against the other's positives too
    assert torch.allclose(torch.cat([ranks[0]["logits"], ranks[1]["logits"]]), out.logits, atol=1e-4)


# ----------------------------------------------------------------------------------------------------
# training and save/load
# ----------------------------------------------------------------------------------------------------
def test_tiny_trainer_run_and_save_load(tmp_path):
    from transformers import AutoModel

    from hf_ssl.training.data import SSLViewDataset, build_view_generator, load_image_stream

    model = make_model()
    ds = SSLViewDataset(load_image_stream("builtin:digits", shuffle_buffer=16), build_view_generator(model.config))
    trainer = tiny_training_run(model, ds, tmp_path / "out", max_steps=4, batch_size=8)
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 4 and all(np.isfinite(logged))
    model.eval().save_pretrained(tmp_path / "g2v")
    reloaded = AutoModel.from_pretrained(tmp_path / "g2v").eval()
    assert type(reloaded) is Grasp2VecForSelfSupervisedPretraining
    assert reloaded.config.scene_backbone_config.hidden_sizes == model.config.scene_backbone_config.hidden_sizes
    batch = make_batch(n=4)
    assert torch.allclose(model(**batch).loss, reloaded(**batch).loss, atol=1e-6)
    scene_dir = model.export_encoder(tmp_path / "scene", attribute="scene_encoder")
    scene = AutoModel.from_pretrained(scene_dir).eval()
    with torch.no_grad():
        ref, _ = model.embed_scene(batch["pre_grasp_pixel_values"])
        assert torch.allclose(scene(batch["pre_grasp_pixel_values"]).pooler_output.flatten(1), ref, atol=1e-5)


def test_demo_preset():
    cfg = METHOD.make_config("cpu-demo")
    assert cfg.scene_size == 64 and cfg.image_size == 32 and cfg.augmentation["policy"] == "simulated_grasp"
