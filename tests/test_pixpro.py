"""PixPro: pixel correspondences, positive-pair-only loss, PPM, momentum encoder, training run."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from hf_ssl.modeling.pixpro import METHOD, PixProConfig, PixProForSelfSupervisedPretraining
from hf_ssl.modeling.pixpro.modeling_pixpro import (PixelPropagationModule, pixel_consistency_loss,
                                                     positive_pair_mask)
from hf_ssl.modeling.pixpro.views_pixpro import crop_coords
from hf_ssl.training.data import SSLDataCollator, build_view_generator
from tiny_configs import TINY_CONFIGS, TINY_RESNET

FULL = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
FLIPPED = torch.tensor([[1.0, 0.0, 0.0, 1.0]])


def make_model(**overrides):
    torch.manual_seed(0)
    return PixProForSelfSupervisedPretraining(PixProConfig(**{**TINY_CONFIGS["pixpro"], **overrides}))


def make_batch(config, n=4, seed=0, image=None):
    policy = build_view_generator(config)
    rng = np.random.default_rng(seed)
    img = image if image is not None else Image.fromarray(
        (np.random.default_rng(seed).random((48, 40, 3)) * 255).astype("uint8"))
    batch = SSLDataCollator()([policy(img, rng) for _ in range(n)])
    batch.pop("num_skipped")
    return batch


def test_identical_crops_give_diagonal_mask():
    mask = positive_pair_mask(FULL, FULL, 4, 4, 0.7)
    assert torch.equal(mask[0], torch.eye(16))  # neighbours are 1/sqrt(2) = 0.707 diagonals apart: not positive


def test_flipped_crop_gives_mirrored_mask():
    mask = positive_pair_mask(FULL, FLIPPED, 4, 4, 0.7)[0]
    expected = torch.zeros(16, 16)
    for r in range(4):
        for c in range(4):
            expected[r * 4 + c, r * 4 + (3 - c)] = 1
    assert torch.equal(mask, expected)
    # the threshold is a distance in cell diagonals: a larger threshold adds the 4-neighbours, then the diagonals
    assert positive_pair_mask(FULL, FULL, 4, 4, 0.8)[0].sum() == 16 + 2 * 24
    assert positive_pair_mask(FULL, FULL, 4, 4, 1.01)[0].sum() == 16 + 2 * 24 + 2 * 18


def test_shifted_crop_mask_matches_geometry():
    # view 2 is the right half of view 1, both 2x2 cells. x centres: view 1 0.25, 0.75; view 2 0.625, 0.875.
    # The larger cell diagonal is view 1's sqrt(0.5): |0.25-0.625| = 0.53, |0.25-0.875| = 0.88, |0.75-x| <= 0.18
    # diagonals; cells in different rows are 0.5 / sqrt(0.5) = 0.707 > 0.7 apart.
    mask = positive_pair_mask(FULL, torch.tensor([[0.5, 0.0, 1.0, 1.0]]), 2, 2, 0.7)[0]
    expected = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]], dtype=torch.float32)
    assert torch.equal(mask, expected)


def test_view_policy_coords_match_pixel_content():
    """Positive cells of the two views see the same part of a coordinate-coded image (crop boxes + flips exact)."""
    config = PixProConfig(**{**TINY_CONFIGS["pixpro"], "augmentation": {
        "color_jitter": 0.0, "grayscale": 0.0, "gaussian_blur": 0.0, "horizontal_flip": 0.5, "crop_scale": [0.3, 1.0]}},
        image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0])
    h, w = 96, 128
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx / (w - 1), yy / (h - 1), np.zeros_like(xx, dtype=float)], -1)
    img = Image.fromarray((arr * 255).round().astype("uint8"))
    batch = make_batch(config, n=16, seed=3, image=img)
    (v1, v2), (c1, c2) = batch["pixel_values"], batch["coords"]
    flips = (c1[:, 0] > c1[:, 2]) | (c2[:, 0] > c2[:, 2])
    assert flips.any() and not flips.all()
    cells1 = torch.nn.functional.adaptive_avg_pool2d(v1[:, :2], 4).flatten(2)  # [B, 2, 16] mean (x, y) per cell
    cells2 = torch.nn.functional.adaptive_avg_pool2d(v2[:, :2], 4).flatten(2)
    mask = positive_pair_mask(c1, c2, 4, 4, 0.7)
    assert mask.sum() > 0
    b, i, j = mask.nonzero(as_tuple=True)
    gap = (cells1[b, :, i] - cells2[b, :, j]).abs()
    # a positive pair is < 0.7 diagonals apart: its mean colours differ by less than a cell size, far less than
    # pairs chosen at random
    def diag(c):
        return torch.sqrt(((c[:, 2] - c[:, 0]) / 4) ** 2 + ((c[:, 3] - c[:, 1]) / 4) ** 2)

    bound = 0.7 * torch.maximum(diag(c1), diag(c2))
    assert (gap.max(dim=1).values <= bound[b] + 0.03).all()
    rand = (cells1[b, :, i] - cells2[b, :, (j + 5) % 16]).abs().mean()
    assert gap.mean() < 0.5 * rand


def test_crop_coords_flip_swaps_x():
    info = {"box": (10, 20, 30, 40), "flipped": False, "image_size": (100, 200)}
    assert torch.allclose(crop_coords(info), torch.tensor([0.1, 0.1, 0.4, 0.3]))
    info["flipped"] = True
    assert torch.allclose(crop_coords(info), torch.tensor([0.4, 0.1, 0.1, 0.3]))


def test_loss_only_on_positive_pairs():
    torch.manual_seed(0)
    online, target = torch.randn(2, 8, 3, 3), torch.randn(2, 8, 3, 3)
    mask = torch.zeros(2, 9, 9)
    mask[0, 0, 4] = mask[0, 2, 2] = mask[1, 5, 1] = 1
    loss = pixel_consistency_loss(online, target, mask)
    q = torch.nn.functional.normalize(online.flatten(2), dim=1)
    k = torch.nn.functional.normalize(target.flatten(2), dim=1)
    manual = -2 * ((q[0, :, 0] @ k[0, :, 4] + q[0, :, 2] @ k[0, :, 2]) / 2 + q[1, :, 5] @ k[1, :, 1]) / 2
    assert torch.allclose(loss, manual, atol=1e-5)
    # changing features at cells that are in no positive pair leaves the loss unchanged
    online2, target2 = online.clone(), target.clone()
    online2[0, :, 1, 1] += 5.0
    target2[1, :, 2, 2] -= 3.0
    assert torch.allclose(pixel_consistency_loss(online2, target2, mask), loss)
    target2[0, :, 1, 1] += 3.0  # cell 4 of image 0 is a positive
    assert not torch.allclose(pixel_consistency_loss(online2, target2, mask), loss)


def test_model_loss_matches_mask_and_symmetry():
    model = make_model().train()
    batch = make_batch(model.config)
    out = model(**batch)
    v1, v2 = batch["pixel_values"]
    c1, c2 = batch["coords"]
    with torch.no_grad():
        # recompute from the parts (BN in train mode uses the same batch statistics)
        from hf_ssl.modeling.backbones import encoder_feature_map
        p1 = model.ppm(model.projector(encoder_feature_map(model.encoder, v1)))
        p2 = model.ppm(model.projector(encoder_feature_map(model.encoder, v2)))
        t1, t2 = model._target(v1), model._target(v2)
        m12 = positive_pair_mask(c1, c2, *p1.shape[-2:])
        expected = pixel_consistency_loss(p1, t2, m12) + pixel_consistency_loss(p2, t1, m12.transpose(1, 2))
    assert torch.allclose(out.loss.detach(), expected, atol=1e-5)
    assert out.metrics["positive_pairs_per_image"] == m12.sum(dim=(1, 2)).mean()


def test_no_gradient_to_momentum_encoder():
    model = make_model().train()
    out = model(**make_batch(model.config))
    out.loss.backward()
    for name, p in model.named_parameters():
        if name.startswith(("teacher_encoder.", "teacher_projector.")):
            assert not p.requires_grad and p.grad is None, name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.ppm.parameters())
    # the momentum encoder starts as an exact copy
    fresh = make_model()
    for (n, t), s in zip(fresh.teacher_encoder.state_dict().items(), fresh.encoder.state_dict().values()):
        assert torch.equal(t, s), n


def test_ema_formula_and_momentum_schedule():
    model = make_model(base_momentum=0.9)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(torch.randn_like(p))
    teacher_before = [p.clone() for p in model.teacher_encoder.parameters()]
    student = [p.clone() for p in model.encoder.parameters()]
    step, max_steps = 3, 10
    model.on_step_end(step, max_steps)
    m = 1 - (1 - 0.9) * (math.cos(math.pi * step / max_steps) + 1) / 2
    for t0, s, t1 in zip(teacher_before, student, model.teacher_encoder.parameters()):
        assert torch.allclose(t1, m * t0 + (1 - m) * s, atol=1e-6)
    assert math.isclose(float(model.current_momentum), m, rel_tol=1e-6)
    model.on_step_end(max_steps, max_steps)
    assert float(model.current_momentum) == 1.0


@pytest.mark.parametrize("gamma", [1.0, 2.0, 4.0])
def test_ppm_is_clamped_similarity_power(gamma):
    torch.manual_seed(0)
    ppm = PixelPropagationModule(6, gamma=gamma, clamp_value=0.0, transform_layers=0)
    feat = torch.randn(2, 6, 3, 2)
    out = ppm(feat)
    f = torch.nn.functional.normalize(feat.flatten(2), dim=1)
    sim = torch.einsum("bci,bcj->bij", f, f)
    assert (sim < 0).any()
    weights = sim.clamp(min=0) ** gamma
    manual = torch.einsum("bij,bcj->bci", weights, f).reshape(2, 6, 3, 2)
    assert torch.allclose(out, manual, atol=1e-5)
    # gamma sharpens: with larger gamma, weights of dissimilar pixels shrink relative to self-similarity (1)
    assert torch.all(weights <= sim.clamp(min=0) + 1e-6)


def test_ppm_transform_layer_default_is_one_conv():
    model = make_model()
    assert isinstance(model.ppm.transform, torch.nn.Conv2d) and model.ppm.transform.kernel_size == (1, 1)
    cfg = PixProConfig()
    assert (cfg.positive_distance_threshold, cfg.ppm_gamma, cfg.ppm_transform_layers, cfg.base_momentum,
            cfg.projection_dim, cfg.projection_hidden_dim) == (0.7, 2.0, 1, 0.99, 256, 4096)


def test_dense_features_and_single_view():
    model = make_model().eval()
    x = torch.randn(2, 3, 32, 32)
    dense = model.get_dense_features(x)
    assert dense.shape == (2, 16, 4, 4)
    assert torch.allclose(model.get_image_features(x), dense.mean(dim=(2, 3)), atol=1e-5)
    assert model(pixel_values=x).loss is None


@pytest.mark.parametrize("bad", [dict(positive_distance_threshold=0.0), dict(ppm_gamma=-1.0),
                                 dict(ppm_transform_layers=3), dict(base_momentum=1.5), dict(projection_dim=0)])
def test_bad_config(bad):
    with pytest.raises(ValueError):
        PixProConfig(**{**TINY_CONFIGS["pixpro"], **bad})


def test_bad_forward_inputs():
    model = make_model().train()
    batch = make_batch(model.config)
    with pytest.raises(ValueError, match="coords"):
        model(pixel_values=batch["pixel_values"])
    with pytest.raises(ValueError, match="channels"):
        model(pixel_values=[v[:, :1] for v in batch["pixel_values"]], coords=batch["coords"])
    with pytest.raises(ValueError, match="coords"):
        model(pixel_values=batch["pixel_values"], coords=[c[:, :3] for c in batch["coords"]])


def test_save_load_roundtrip(tmp_path):
    model = make_model().eval()
    model.on_step_end(2, 10)
    model.save_pretrained(tmp_path)
    reloaded = PixProForSelfSupervisedPretraining.from_pretrained(tmp_path).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.get_dense_features(x), reloaded.get_dense_features(x))
    assert torch.equal(model.current_momentum, reloaded.current_momentum)
    assert all(not p.requires_grad for n, p in reloaded.named_parameters() if n.startswith("teacher_"))


def test_tiny_training_run(tmp_path):
    from hf_ssl.training.arguments import SSLTrainingArguments
    from hf_ssl.training.data import SSLViewDataset, load_image_stream
    from hf_ssl.training.trainer import SSLTrainer

    config = METHOD.make_config("cpu-demo", backbone_config=dict(TINY_RESNET), projection_hidden_dim=32,
                                projection_dim=16)
    torch.manual_seed(0)
    model = PixProForSelfSupervisedPretraining(config)
    teacher0 = [p.clone() for p in model.teacher_encoder.parameters()]
    train = SSLViewDataset(load_image_stream("builtin:digits", shuffle_buffer=16), build_view_generator(config))
    args = SSLTrainingArguments(output_dir=str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=8,
                                learning_rate=1e-3, logging_steps=1, save_strategy="no", disable_tqdm=True)
    trainer = SSLTrainer(model=model, args=args, train_dataset=train)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3 and all(np.isfinite(h["loss"]) for h in logs)
    assert all(h["positive_pairs_per_image"] > 0 for h in logs)
    # the momentum encoder moved (EMA ran) but is not the online encoder
    moved = [not torch.equal(a, b) for a, b in zip(teacher0, model.teacher_encoder.parameters())]
    assert any(moved)
    assert any(not torch.equal(a, b) for a, b in zip(model.teacher_encoder.parameters(), model.encoder.parameters()))
