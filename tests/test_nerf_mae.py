"""NeRF-MAE: opacity-aware masked 3-D patch reconstruction on a stock VideoMAE encoder."""

import json
import os

import pytest
import torch
from tiny_configs import tiny_config

from hf_ssl.modeling.backbones import patchify_3d, volume_to_video
from hf_ssl.modeling.nerf_mae import METHOD, NeRFMAEConfig, NeRFMAEForSelfSupervisedPretraining


def _model(**overrides):
    torch.manual_seed(0)
    return NeRFMAEForSelfSupervisedPretraining(tiny_config("nerf_mae", **overrides))


def _radiance(b=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 4, size, size, size, generator=g)
    x[:, 3] = (x[:, 3] > 0.5).float() * x[:, 3]  # about half the voxels empty (alpha 0)
    return x


def _mask(b, n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    order = torch.rand(b, n, generator=g).argsort(dim=1)
    m = torch.zeros(b, n, dtype=torch.bool)
    m.scatter_(1, order[:, :k], True)
    return m


def test_loss_equals_hand_written_reference():
    model = _model()
    x = _radiance()
    n = 8  # (16 / 8) ** 3 patches
    mask = _mask(2, n, 6)
    pred = torch.randn(2, n, 8 * 8 * 8 * 4)
    terms = model.reconstruction_loss(pred, x, mask)
    # per-voxel loops over the patchified grid
    target = patchify_3d(x, (8, 8, 8)).view(2, n, -1, 4)
    p = pred.view(2, n, -1, 4)
    a_num = a_den = c_num = c_den = 0.0
    for b in range(2):
        for j in range(n):
            if not mask[b, j]:
                continue
            for v in range(512):
                alpha = float(target[b, j, v, 3])
                a_num += (float(torch.sigmoid(p[b, j, v, 3])) - alpha) ** 2
                a_den += 1
                if alpha > 0.01:
                    c_num += float(((p[b, j, v, :3] - target[b, j, v, :3]) ** 2).sum())
                    c_den += 3
    assert float(terms["alpha_loss"]) == pytest.approx(a_num / a_den, rel=1e-5)
    assert float(terms["color_loss"]) == pytest.approx(c_num / c_den, rel=1e-5)
    assert float(terms["loss"]) == pytest.approx(a_num / a_den + c_num / c_den, rel=1e-5)


def test_gradient_only_on_masked_patches_and_occupied_colour():
    model = _model()
    x = _radiance()
    mask = _mask(2, 8, 6, seed=1)
    pred = torch.randn(2, 8, 2048, requires_grad=True)
    model.reconstruction_loss(pred, x, mask)["loss"].backward()
    g = pred.grad.view(2, 8, 512, 4)
    assert g[~mask].abs().sum() == 0 and g[mask].abs().sum() > 0  # visible patches never supervised
    alpha = patchify_3d(x, (8, 8, 8)).view(2, 8, 512, 4)[..., 3]
    empty = (alpha <= 0.01) & mask.unsqueeze(-1)
    assert g[..., :3][empty].abs().sum() == 0  # colour of empty voxels is not supervised
    assert g[..., 3][empty].abs().sum() > 0  # their density is
    # the released code's variant: colour on every occupied voxel, masked or not
    model_all = _model(color_loss_region="all")
    pred.grad = None
    model_all.reconstruction_loss(pred, x, mask)["loss"].backward()
    g = pred.grad.view(2, 8, 512, 4)
    occupied_visible = (alpha > 0.01) & ~mask.unsqueeze(-1)
    assert g[..., :3][occupied_visible].abs().sum() > 0 and g[..., 3][~mask].abs().sum() == 0


def test_generic_volume_loss_is_masked_mse():
    model = _model(num_channels=1, density_channel=None, backbone_config=dict(
        model_type="videomae", hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        patch_size=8, tubelet_size=8))
    x = torch.randn(2, 1, 16, 16, 16)
    mask = _mask(2, 8, 5)
    pred = torch.randn(2, 8, 512)
    target = patchify_3d(x * 1.0 + 0.0, (8, 8, 8))  # mean 0 / std 1 by default: raw = input
    ref = ((pred - target) ** 2).mean(-1)[mask].mean()
    assert float(model.reconstruction_loss(pred, x, mask)["loss"]) == pytest.approx(float(ref), rel=1e-5)


def test_masked_patches_never_reach_the_encoder_and_encoder_gets_gradients():
    model = _model().train()
    x = _radiance()
    mask = _mask(2, 8, 6, seed=2)
    out = model(pixel_values_volumes=x, bool_masked_pos=mask)
    y = x.clone()
    # overwrite the content of every masked patch
    patches = patchify_3d(y, (8, 8, 8))
    grid_mask = mask.view(2, 2, 2, 2)
    for b in range(2):
        for d in range(2):
            for h in range(2):
                for w in range(2):
                    if grid_mask[b, d, h, w]:
                        y[b, :, d * 8:(d + 1) * 8, h * 8:(h + 1) * 8, w * 8:(w + 1) * 8] = 7.0
    assert not torch.equal(patches, patchify_3d(y, (8, 8, 8)))
    out2 = model(pixel_values_volumes=y, bool_masked_pos=mask)
    assert torch.allclose(out.embeddings, out2.embeddings, atol=1e-6)
    out.loss.backward()
    assert model.encoder.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0
    assert out.metrics["mask_fraction"] == pytest.approx(0.75)


def test_patch_order_matches_the_stock_tubelet_embedding():
    model = _model()
    x = _radiance()
    proj = model.encoder.embeddings.patch_embeddings.projection
    w = proj.weight.permute(0, 2, 3, 4, 1).reshape(proj.weight.shape[0], -1)  # (pd, ph, pw, C) flattening
    ours = patchify_3d(x, (8, 8, 8)) @ w.t() + proj.bias
    assert torch.allclose(ours, model.encoder.embeddings.patch_embeddings(volume_to_video(x)), atol=1e-5)


def test_clear_errors_and_config_validation():
    model = _model().eval()
    with pytest.raises(ValueError, match="depth"):
        model.get_input_features(torch.randn(2, 4, 16, 16))
    with pytest.raises(ValueError, match="spatial size"):
        model(pixel_values_volumes=torch.randn(2, 4, 16, 16, 24))
    with pytest.raises(ValueError, match="channels"):
        model(pixel_values_volumes=torch.randn(2, 3, 16, 16, 16))
    with pytest.raises(ValueError, match="bool_masked_pos"):
        model(pixel_values_volumes=_radiance(), bool_masked_pos=torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="pixel_values_volumes"):
        model()
    for bad in (dict(mask_ratio=1.0), dict(density_channel=4), dict(color_loss_region="some"),
                dict(alpha_threshold=-0.1), dict(backbone_config="vit-micro"), dict(image_size=20),
                dict(decoder_num_heads=3)):
        with pytest.raises(ValueError):
            tiny_config("nerf_mae", **bad)
    cfg = METHOD.make_config("volume")
    assert cfg.num_channels == 1 and cfg.density_channel is None and cfg.backbone_config.num_frames == 96
    paper = NeRFMAEConfig()
    assert (paper.image_size, paper.mask_ratio, paper.num_channels, paper.density_channel) == (160, 0.75, 4, 3)


def test_image_features_treat_an_image_as_a_constant_volume():
    model = _model().eval()
    img = torch.rand(2, 4, 16, 16)
    vol = img.unsqueeze(2).expand(-1, -1, 16, -1, -1)
    assert torch.allclose(model.get_image_features(img), model.get_input_features(vol.contiguous()))


def test_export_is_a_vanilla_videomae_with_the_same_features(tmp_path):
    from transformers import VideoMAEModel

    model = _model().eval()
    model.export_encoder(tmp_path)
    info = json.load(open(os.path.join(tmp_path, "hf_ssl_export.json")))
    enc = VideoMAEModel.from_pretrained(tmp_path).eval()
    x = _radiance()
    with torch.no_grad():
        feats = enc(**{info["input_name"]: model.export_check_input(x)[1]}).last_hidden_state.mean(1)
    assert torch.allclose(feats, model.get_input_features(x), atol=1e-5)


def test_tiny_training_run_and_save_load(tmp_path):
    from transformers import AutoModel

    from hf_ssl.training.arguments import SSLTrainingArguments
    from hf_ssl.training.data import SSLViewDataset, build_view_generator, load_image_stream
    from hf_ssl.training.trainer import SSLTrainer

    model = _model()
    config = model.config
    ds = SSLViewDataset(load_image_stream(METHOD.default_dataset, split="test", shuffle_buffer=16),
                        build_view_generator(config))
    args = SSLTrainingArguments(output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=4,
                                learning_rate=1e-3, save_strategy="no", logging_steps=1, disable_tqdm=True)
    trainer = SSLTrainer(model=model, args=args, train_dataset=ds)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    model.save_pretrained(tmp_path / "ckpt")
    reloaded = AutoModel.from_pretrained(tmp_path / "ckpt").eval()
    x = _radiance()
    assert torch.equal(model.eval().get_input_features(x), reloaded.get_input_features(x))


def test_geometry_only_keeps_density_and_greys_the_colour():
    model = _model().eval()
    cfg = model.config
    raw = _radiance()
    recoloured = raw.clone()
    recoloured[:, :3] = torch.rand(2, 3, 16, 16, 16, generator=torch.Generator().manual_seed(4))
    mean = torch.tensor(cfg.image_mean).view(1, 4, 1, 1, 1)
    std = torch.tensor(cfg.image_std).view(1, 4, 1, 1, 1)
    a = model.geometry_only((raw - mean) / std) * std + mean
    b = model.geometry_only((recoloured - mean) / std) * std + mean
    assert torch.allclose(a[:, 3], raw[:, 3], atol=1e-5)  # density untouched
    assert torch.allclose(a[:, :3], 0.5 * raw[:, 3:4].expand(-1, 3, -1, -1, -1), atol=1e-5)  # grey * alpha
    assert torch.allclose(a, b, atol=1e-5)  # colours no longer matter
    with pytest.raises(ValueError, match="density channel"):
        _model(density_channel=None).geometry_only(raw)


def _write_radiance_folder(root, hue_shift=0.0, size=16):
    """A tiny labelled radiance dataset `<root>/{train,test}/<class>/<i>.tif` (real generator, 2 shape classes);
    `hue_shift` rotates every volume's colours (same geometry, other scene colours)."""
    import numpy as np

    from hf_ssl.training.volumes import generate_shape_volume, save_volume_tiff

    for split, n, seed in (("train", 4, 0), ("test", 2, 1)):
        for c, shape in enumerate(("sphere", "torus")):
            rng = np.random.default_rng([seed, c])
            d = os.path.join(root, split, f"{c:02d}_{shape}")
            os.makedirs(d, exist_ok=True)
            for i in range(n):
                vol = generate_shape_volume(shape, rng, size=size, radiance=True)
                if hue_shift:
                    vol[..., :3] = np.roll(vol[..., :3], 1, axis=-1) * (vol[..., 3:] > 0.01)
                save_volume_tiff(vol, os.path.join(d, f"{i}.tif"))
    return str(root)


def _write_colour_classes(root, size=16):
    """Two classes of the SAME shape (spheres of random pose and size) that differ only in colour: red vs blue."""
    import numpy as np

    from hf_ssl.training.volumes import generate_shape_volume, save_volume_tiff

    for split, n, seed in (("train", 6, 0), ("test", 4, 1)):
        for c, rgb in enumerate(((1.0, 0.1, 0.1), (0.1, 0.1, 1.0))):
            rng = np.random.default_rng([seed, c, 7])
            d = os.path.join(root, split, f"{c:02d}_colour")
            os.makedirs(d, exist_ok=True)
            for i in range(n):
                vol = generate_shape_volume("sphere", rng, size=size, radiance=True)
                vol[..., :3] = np.asarray(rgb) * (vol[..., 3:] > 0.01)
                save_volume_tiff(vol, os.path.join(d, f"{i}.tif"))
    return str(root)


def test_geometry_knn_task_metric_ignores_scene_colours(tmp_path):
    model = _model().eval()
    plain = _write_radiance_folder(tmp_path / "plain")
    shifted = _write_radiance_folder(tmp_path / "shifted", hue_shift=1.0)
    m1, m2 = model.task_metrics(plain, "test"), model.task_metrics(shifted, "test")
    assert set(m1) == {"geometry_knn_accuracy"} and 0.0 <= m1["geometry_knn_accuracy"] <= 1.0
    assert m1 == m2  # same geometry, other colours: same metric
    # the ordinary features do see the colours
    from hf_ssl.training.data import labeled_eval_dataset
    from hf_ssl.training.evaluation import extract_features, knn_and_linear_metrics

    f1, _ = extract_features(model, labeled_eval_dataset(plain, "test", model.config), disable_progress=True)
    f2, _ = extract_features(model, labeled_eval_dataset(shifted, "test", model.config), disable_progress=True)
    assert not torch.allclose(torch.tensor(f1), torch.tensor(f2), atol=1e-4)
    # classes told apart only by colour (one shape, red vs blue): the plain features separate them, the geometry
    # k-NN must not (it sees the density field alone)
    by_colour = _write_colour_classes(tmp_path / "colour")
    bank = extract_features(model, labeled_eval_dataset(by_colour, "train", model.config), disable_progress=True)
    query = extract_features(model, labeled_eval_dataset(by_colour, "test", model.config), disable_progress=True)
    assert knn_and_linear_metrics(bank, query)["knn_accuracy"] == 1.0
    assert model.task_metrics(by_colour, "test")["geometry_knn_accuracy"] <= 0.75
    # generic intensity volumes (no density channel) have no geometry metric
    assert _model(num_channels=1, density_channel=None, image_mean=[0.5], image_std=[0.25]).task_metrics(plain) == {}
