"""I2P-MAE invariants on a tiny point transformer (CPU, 64-point clouds, 8 groups of 8, 32 px depth maps)."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import torch

import hf_ssl  # noqa: F401
from hf_ssl.modeling.i2p_mae import METHOD, I2PMAEConfig, I2PMAEForSelfSupervisedPretraining
from hf_ssl.training.points import (chamfer_distance_l2, decode_points, encode_points, farthest_point_sample,
                                    group_points, knn_indices)
from train_utils import tiny_training_run

TINY_POINT = dict(model_type="distilbert", dim=32, n_layers=1, n_heads=2, hidden_dim=64, vocab_size=1, dropout=0.0,
                  attention_dropout=0.0)
TINY_VIT = dict(model_type="vit", hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                patch_size=8)


def make_config(**kwargs):
    base = dict(backbone_config=dict(TINY_POINT), num_points=64, num_groups=8, group_size=8,
                tokenizer_hidden_dims=[16, 32, 32], decoder_hidden_size=32, decoder_depth=1, decoder_num_heads=2,
                image_size=32, image_encoder_config=dict(TINY_VIT))
    base.update(kwargs)
    return I2PMAEConfig(**base)


def make_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return I2PMAEForSelfSupervisedPretraining(make_config(**kwargs))


def clouds(b=2, n=64, seed=0):
    return torch.rand(b, n, 3, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---------------------------------------------------------------------------------------------- point ops
def test_fps_spreads_points_and_matches_bruteforce_definition():
    pts = clouds(1, 200, seed=1)
    idx = farthest_point_sample(pts, 16)[0]
    assert idx[0] == 0 and len(set(idx.tolist())) == 16
    # each pick is the point farthest from all previous picks (brute force)
    for i in range(1, 16):
        chosen = pts[0, idx[:i]]
        d = torch.cdist(pts[0], chosen).min(dim=1).values
        assert torch.isclose(d[idx[i]], d.max())
    # spread: the minimum pairwise distance of FPS picks beats that of random picks
    def min_pair(sel):
        d = torch.cdist(sel, sel) + torch.eye(len(sel)) * 10
        return d.min()
    rand = torch.stack([min_pair(pts[0, torch.randperm(200, generator=torch.Generator().manual_seed(s))[:16]])
                        for s in range(20)])
    assert min_pair(pts[0, idx]) > rand.max()


def test_knn_grouping_is_nearest_and_centre_relative():
    pts = clouds(2, 100, seed=2)
    neigh, centers, nbr_idx, center_idx = group_points(pts, 5, 7)
    assert neigh.shape == (2, 5, 7, 3) and centers.shape == (2, 5, 3)
    for b in range(2):
        for g in range(5):
            d = ((pts[b] - centers[b, g]) ** 2).sum(-1)
            ref = torch.argsort(d)[:7]
            assert set(ref.tolist()) == set(nbr_idx[b, g].tolist())
            assert torch.allclose(neigh[b, g], pts[b, nbr_idx[b, g]] - centers[b, g])
            assert nbr_idx[b, g, 0] == center_idx[b, g]  # the centre is its own nearest neighbour
            assert torch.allclose(neigh[b, g, 0], torch.zeros(3))
    assert knn_indices(pts, centers, 3).shape == (2, 5, 3)


def test_chamfer_matches_bruteforce_reference():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(3, 5, 3, generator=g), torch.randn(3, 6, 3, generator=g)
    ref_ab, ref_ba = [], []
    for s in range(3):
        for p in a[s]:
            ref_ab.append(min(float(((p - q) ** 2).sum()) for q in b[s]))
        for q in b[s]:
            ref_ba.append(min(float(((p - q) ** 2).sum()) for p in a[s]))
    ref = np.mean(ref_ab) + np.mean(ref_ba)
    assert chamfer_distance_l2(a, b).item() == pytest.approx(ref, rel=1e-5)
    assert chamfer_distance_l2(a, a).item() == pytest.approx(0.0, abs=1e-10)
    # permutation invariance and a finite gradient even at zero distance
    x = a.clone().requires_grad_(True)
    chamfer_distance_l2(x, a[:, torch.randperm(5)]).backward()
    assert torch.isfinite(x.grad).all()


def test_point_storage_roundtrip_and_bad_files():
    from hf_ssl.training.data import UndecodableImage

    pts = np.random.default_rng(0).uniform(-1, 1, (50, 3))
    data = encode_points(pts)
    back = decode_points({"bytes": data, "path": None})
    assert back.shape == (50, 3) and np.abs(back - pts).max() < 2e-5
    for bad in (b"", data[:40], b"\x89PNG not really"):
        with pytest.raises(UndecodableImage):
            decode_points({"bytes": bad, "path": None})
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (3, 8)).save(buf, format="PNG")
    with pytest.raises(UndecodableImage):
        decode_points(buf.getvalue())  # an ordinary RGB image is not a point table


def test_digits3d_builtin_is_labelled_and_split():
    from hf_ssl.training.data import materialize_builtin

    root = materialize_builtin("digits3d")
    assert sorted(os.listdir(os.path.join(root, "test"))) == [str(i) for i in range(10)]
    n_test = sum(len(os.listdir(os.path.join(root, "test", c))) for c in os.listdir(os.path.join(root, "test")))
    n_train = sum(len(os.listdir(os.path.join(root, "train", c))) for c in os.listdir(os.path.join(root, "train")))
    assert (n_train, n_test) == (1497, 300)
    f = os.path.join(root, "test", "3", sorted(os.listdir(os.path.join(root, "test", "3")))[0])
    pts = decode_points(f)
    assert pts.shape == (2048, 3) and np.sqrt((pts ** 2).sum(1)).max() <= 1.0 + 1e-3


# ---------------------------------------------------------------------------------------------- config
def test_config_validation():
    for bad in (dict(mask_ratio=1.0), dict(mask_ratio=0.0), dict(saliency_temperature=-1.0),
                dict(num_groups=100), dict(group_size=65), dict(projection_densify=4),
                dict(backbone_config="vit-micro"), dict(feature_pooling="cls"),
                dict(image_encoder_config=dict(TINY_VIT, image_size=64)), dict(loss_2d_weight=-1)):
        with pytest.raises(ValueError):
            make_config(**bad)
    cfg = make_config()
    assert cfg.num_masked == int(8 * 0.8) == 6
    paper = I2PMAEConfig()
    assert (paper.num_points, paper.mask_ratio, paper.image_size, paper.projection_densify) == (2048, 0.8, 224, 5)
    assert paper.image_encoder_config.hidden_size == 768 and paper.backbone_config.hidden_size == 384


def test_bad_input_is_a_clear_error():
    model = make_model().eval()
    with pytest.raises(ValueError, match=r"\[batch, num_points, 3\]"):
        model(point_values=torch.randn(2, 64, 4))
    with pytest.raises(ValueError, match="at least"):
        model.get_input_features(torch.randn(2, 4, 3))
    with pytest.raises(ValueError, match="NaN"):
        model(point_values=torch.full((2, 64, 3), float("nan")))
    with pytest.raises(TypeError):
        model.get_image_features(torch.randn(2, 3, 32, 32))


# ---------------------------------------------------------------------------------------------- projection
def test_projection_places_points_and_backprojection_reads_them():
    model = make_model()
    pts = clouds(2, 64, seed=4)
    images, pixels = model.project(pts)
    assert images.shape == (3, 2, 3, 32, 32) and pixels.shape == (3, 2, 64, 2)
    assert pixels.min() >= 0 and pixels.max() <= 31
    mean = torch.tensor(model.config.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(model.config.image_std).view(1, 3, 1, 1)
    raw = images[0] * std + mean  # sigmoid(sum of splatted depths); empty pixels are sigmoid(0) = 0.5
    for b in range(2):
        occupied = torch.zeros(32, 32, dtype=torch.bool)
        occupied[pixels[0, b, :, 0].long(), pixels[0, b, :, 1].long()] = True
        assert not torch.allclose(raw[b, 0][occupied], torch.full_like(raw[b, 0][occupied], 0.5))
    # back-projection of a map that stores (row, col) returns each point's pixel (smooth map: bicubic exact)
    rows = torch.arange(32.0).view(1, 1, 32, 1).expand(2, 1, 32, 32)
    cols = torch.arange(32.0).view(1, 1, 1, 32).expand(2, 1, 32, 32)
    read = model.sample_maps(torch.cat([rows, cols], dim=1), pixels[1])
    assert torch.allclose(read, pixels[1], atol=1e-4)


def test_guided_mask_keeps_salient_tokens_visible():
    model = make_model(saliency_temperature=0.01)
    sal = torch.zeros(64, 8)
    sal[:, 2] = 1.0  # a very salient token
    mask = model.guided_mask(sal)
    assert (mask.sum(1) == 6).all()
    assert (~mask[:, 2]).float().mean() > 0.95  # almost always visible
    # the official temperature (1) on near-uniform attention values draws close to uniformly
    uniform = make_model().guided_mask(torch.full((400, 8), 1 / 16))
    assert abs((~uniform).float().mean(0) - 2 / 8).max() < 0.08


# ---------------------------------------------------------------------------------------------- losses
def test_2d_encoder_is_frozen_and_gets_no_gradient():
    model = make_model().train()
    assert not model.image_encoder.training
    out = model(point_values=clouds())
    out.loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in model.image_encoder.parameters())
    assert model.encoder.embeddings.position_embeddings.weight.abs().sum() == 0
    assert model.encoder.embeddings.position_embeddings.weight.grad is None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.transformer.parameters())
    assert torch.isfinite(out.loss) and set(out.metrics) == {"loss_3d", "loss_2d"}


def _grads_wrt_tokens(model, pts, mask):
    """Gradient of each loss term w.r.t. the per-token tokenizer outputs (hook on the token embeddings)."""
    store = {}

    def hook(_, __, output):
        output.retain_grad()
        store["tokens"] = output

    h = model.point_tokenizer.register_forward_hook(hook)
    try:
        grads = {}
        for name, w3, w2 in (("3d", 1.0, 0.0), ("2d", 0.0, 1.0)):
            model.config.loss_3d_weight, model.config.loss_2d_weight = w3, w2
            model.zero_grad()
            out = model(point_values=pts, bool_masked_pos=mask)
            out.loss.backward()
            grads[name] = store["tokens"].grad.clone()
    finally:
        h.remove()
        model.config.loss_3d_weight = model.config.loss_2d_weight = 1.0
    return grads


def test_losses_touch_the_right_tokens():
    """Masked tokens never enter the encoder: the Chamfer loss reaches the tokenizer only through visible tokens (as
    context), and both losses give exactly zero gradient to the masked tokens' embeddings."""
    model = make_model().eval()
    pts = clouds(2, 64, seed=5)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, [0, 1, 2, 3, 4, 5]] = True
    mask[1, [2, 3, 4, 5, 6, 7]] = True
    grads = _grads_wrt_tokens(model, pts, mask)
    for name in ("3d", "2d"):
        g = grads[name].norm(dim=-1)  # [B, G]
        assert (g[mask] == 0).all(), name
        assert (g[~mask] > 0).all(), name


def test_chamfer_term_uses_only_masked_patches():
    """Changing the points of a visible patch's *interior* (not its tokens' inputs) cannot change the 3D loss target:
    the 3D loss equals a hand-computed Chamfer over the masked patches' predictions and ground truth."""
    model = make_model().eval()
    pts = clouds(2, 64, seed=6)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, :6] = True
    out = model(point_values=pts, bool_masked_pos=mask)
    neigh, _, _, _ = group_points(pts, 8, 8)
    gt = neigh[mask].reshape(-1, 8, 3)
    ref = chamfer_distance_l2(out.logits.reshape(-1, 8, 3), gt)
    assert out.metrics["loss_3d"].item() == pytest.approx(ref.item(), rel=1e-6)
    assert out.logits.shape == (2 * 6, 8, 3)


def test_2d_target_is_backprojected_feature_of_visible_patches():
    model = make_model().eval()
    pts = clouds(2, 64, seed=7)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, 2:] = True
    out = model(point_values=pts, bool_masked_pos=mask)
    # recompute the 2D target by hand: nearest-pixel features at every point of the visible patches, averaged
    images, pixels = model.project(pts)
    feats, _ = model.image_semantics(images)
    _, _, nbr_idx, _ = group_points(pts, 8, 8)
    target = []
    for v in range(3):
        up = torch.nn.functional.interpolate(feats[v], size=(32, 32), mode="bicubic", align_corners=False)
        per_view = []
        for b in range(2):
            rows = []
            for gi in range(2):
                px = pixels[v, b, nbr_idx[b, gi]].long()
                rows.append(up[b, :, px[:, 0], px[:, 1]].t().mean(0))
            per_view.append(torch.stack(rows))
        target.append(torch.stack(per_view))
    target = torch.cat(target, dim=-1)
    # the model's prediction head output is compared to this target by MSE
    pred = model.head_2d
    assert target.shape == (2, 2, 3 * 32)
    store = {}
    h = pred.register_forward_hook(lambda m, i, o: store.setdefault("pred", o))
    model(point_values=pts, bool_masked_pos=mask)
    h.remove()
    ref = torch.nn.functional.mse_loss(store["pred"], target)
    assert out.metrics["loss_2d"].item() == pytest.approx(ref.item(), rel=2e-2)  # interior bicubic ~ grid_sample


# ---------------------------------------------------------------------------------------------- training / io
def test_tiny_training_run_and_save_load(tmp_path):
    from hf_ssl.training.data import SSLViewDataset, build_view_generator, load_image_stream

    model = make_model()
    cfg = model.config
    ds = SSLViewDataset(load_image_stream("builtin:digits3d", split="train", shuffle_buffer=16),
                        build_view_generator(cfg))
    trainer = tiny_training_run(model, ds, tmp_path / "out")
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(np.isfinite(losses))
    model.save_pretrained(tmp_path / "ckpt")
    reloaded = I2PMAEForSelfSupervisedPretraining.from_pretrained(tmp_path / "ckpt").eval()
    x = clouds(2, 64, seed=8)
    assert torch.allclose(model.eval().get_input_features(x), reloaded.get_input_features(x))
    # export: stock DistilBERT + the point tokenizer
    model.export_encoder(tmp_path / "enc")
    info = json.load(open(tmp_path / "enc" / "hf_ssl_export.json"))
    assert info["input_name"] == "inputs_embeds"
    assert os.path.exists(tmp_path / "enc" / "point_tokenizer.safetensors")
    from transformers import DistilBertModel

    stock = DistilBertModel.from_pretrained(tmp_path / "enc").eval()
    with torch.no_grad():
        feats = stock(inputs_embeds=model.export_check_input(x)).last_hidden_state.mean(1)
    assert torch.allclose(feats, model.get_input_features(x), atol=1e-5)


def test_pretrained_2d_encoder_is_loaded_from_a_path(tmp_path):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(1)
    vit = ViTModel(ViTConfig(**{k: v for k, v in TINY_VIT.items() if k != "model_type"}, image_size=32),
                   add_pooling_layer=False)
    vit.save_pretrained(tmp_path / "vit")
    model = make_model(image_encoder_path=str(tmp_path / "vit"))
    sd = vit.state_dict()
    for k, v in model.image_encoder.state_dict().items():
        assert torch.equal(v, sd[k]), k
    assert all(not p.requires_grad for p in model.image_encoder.parameters())


def test_point_views_policy():
    from hf_ssl.training.data import build_view_generator

    cfg = make_config()
    pts = np.random.default_rng(0).uniform(-1, 1, (100, 3))
    from PIL import Image

    img = Image.open(io.BytesIO(encode_points(pts)))
    train = build_view_generator(cfg)(img, np.random.default_rng(0))["point_values"]
    assert train.shape == (64, 3)
    ev = build_view_generator(cfg, "points_eval")
    a, b = ev(img)["point_values"], ev(img)["point_values"]
    assert torch.equal(a, b) and np.abs(a.numpy() - pts[:64]).max() < 2e-5
    assert METHOD.default_dataset == "builtin:digits3d"
