"""TokenCut: exact recovery on synthetic patch features, graph/eigenproblem invariants, CLI end to end."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from hf_ssl.modeling.tokencut import run_tokencut, tokencut, vit_patch_features


def synthetic(h=8, w=10, box=(2, 3, 6, 8), dim=16, seed=0, extra_blob=None):
    """Background patches: random directions in one half-space; foreground patches (rows y0:y1, cols x0:x1) share
    one direction orthogonal to them (plus small noise)."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.zeros(h, w, dim)
    feats[..., 1:] = torch.randn(h, w, dim - 1, generator=g).abs() + 0.5  # background: positive, cos > 0.2
    x0, y0, x1, y1 = box
    fg = torch.zeros(dim)
    fg[0] = 1.0
    feats[y0:y1, x0:x1] = fg + 0.01 * torch.randn(y1 - y0, x1 - x0, dim, generator=g)
    feats[y0:y1, x0:x1, 1:] = feats[y0:y1, x0:x1, 1:].abs() * 0.01
    truth = np.zeros((h, w), dtype=bool)
    truth[y0:y1, x0:x1] = True
    if extra_blob is not None:
        ex0, ey0, ex1, ey1 = extra_blob
        feats[ey0:ey1, ex0:ex1] = fg
    return feats.reshape(h * w, dim), truth


def test_exact_recovery_of_shared_direction_foreground():
    feats, truth = synthetic()
    result = tokencut(feats, (8, 10))
    assert np.array_equal(result.mask, truth)
    assert result.box == (2, 3, 6, 8)
    assert truth[result.seed]
    assert tokencut(feats, (8, 10), patch_size=16).box == (32, 48, 96, 128)


def test_only_the_component_containing_the_seed_is_kept():
    # a second, disconnected blob of the same direction is on the foreground side of the cut, but the object is
    # only the connected component that contains the seed. Both blobs share one direction, so which of them holds
    # the largest eigenvector entry (the seed) is a floating-point tie: accept either, but exactly one of them.
    feats, main = synthetic(box=(1, 1, 5, 5), extra_blob=(8, 6, 10, 8))
    extra = np.zeros_like(main)
    extra[6:8, 8:10] = True
    result = tokencut(feats, (8, 10))
    assert result.bipartition[6:8, 8:10].all() and result.bipartition[1:5, 1:5].all()
    expected, box = (main, (1, 1, 5, 5)) if main[result.seed] else (extra, (8, 6, 10, 8))
    assert expected[result.seed]
    assert np.array_equal(result.mask, expected) and result.box == box


def test_eigenvector_solves_generalized_problem():
    feats, _ = synthetic(seed=1)
    tau, eps = 0.2, 1e-5
    result = tokencut(feats, (8, 10), tau=tau, eps=eps)
    f = torch.nn.functional.normalize(feats.double(), dim=1)
    w = torch.where(f @ f.T > tau, 1.0, eps).double()
    d = torch.diag(w.sum(1))
    x = torch.from_numpy(result.eigenvector.reshape(-1))
    lhs, rhs = (d - w) @ x, d @ x
    lam = (x @ lhs) / (x @ rhs)
    assert torch.allclose(lhs, lam * rhs, atol=1e-8 * float(rhs.abs().max()) + 1e-9)
    assert lam > 1e-9  # not the trivial constant eigenvector (eigenvalue 0)
    assert abs(float((d @ x).sum())) < 1e-6  # D-orthogonal to the constant vector
    # bipartition by the mean, foreground side holds the max-|x| seed
    assert np.array_equal(result.bipartition.reshape(-1), result.eigenvector.reshape(-1) > result.eigenvector.mean())
    assert np.argmax(np.abs(result.eigenvector)) == result.seed[0] * 10 + result.seed[1]


def test_bad_inputs():
    feats, _ = synthetic()
    with pytest.raises(ValueError, match="grid"):
        tokencut(feats, (7, 10))
    with pytest.raises(ValueError, match="num_patches"):
        tokencut(feats[None], (8, 10))
    with pytest.raises(ValueError, match="eps"):
        tokencut(feats, (8, 10), eps=0.0)


@pytest.fixture
def tiny_vit_dir(tmp_path):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    vit = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             patch_size=8, image_size=64), add_pooling_layer=False)
    vit.save_pretrained(tmp_path / "vit")
    return str(tmp_path / "vit")


def _image(path):
    arr = np.full((64, 64, 3), 30, dtype=np.uint8)
    arr[16:40, 24:48] = (230, 200, 20)  # a bright object
    Image.fromarray(arr).save(path)
    return str(path)


def test_vit_patch_features_are_last_layer_keys(tiny_vit_dir):
    from transformers import ViTModel

    vit = ViTModel.from_pretrained(tiny_vit_dir).eval()
    x = torch.randn(1, 3, 64, 64)
    feats, grid = vit_patch_features(vit, x)
    assert grid == (8, 8) and feats.shape == (64, 32)
    hidden = vit_patch_features(vit, x, use_keys=False)[0]
    assert not torch.allclose(feats, hidden)


def test_cli_end_to_end(tiny_vit_dir, tmp_path, capsys):
    from hf_ssl.training.cli import main

    image = _image(tmp_path / "img.png")
    out = tmp_path / "out.png"
    assert main(["tokencut", "--model", tiny_vit_dir, "--image", image, "--output", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    x0, y0, x1, y1 = printed["box"]
    assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64 and all(v % 8 == 0 for v in printed["box"])
    assert printed["grid"] == [8, 8]
    pic = Image.open(out)
    assert pic.size == (64, 64) and np.asarray(pic).std() > 0
    # the python helper gives the same box, and a mask with the box as its bounding box
    result = run_tokencut(tiny_vit_dir, image)
    assert list(result["box"]) == printed["box"]
    rows, cols = np.nonzero(result["mask"])
    assert (cols.min() * 8, rows.min() * 8, (cols.max() + 1) * 8, (rows.max() + 1) * 8) == tuple(result["box"])


def test_hf_ssl_checkpoint_encoder(tmp_path):
    """An hf_ssl model with a ViT encoder works too (its `encoder` is used)."""
    from hf_ssl.modeling.registry import get_method
    from tiny_configs import TINY_CONFIGS

    spec = get_method("cae")
    model = spec.model_class(spec.config_class(**TINY_CONFIGS["cae"]))
    model.save_pretrained(tmp_path / "ckpt")
    image = _image(tmp_path / "img.png")
    result = run_tokencut(str(tmp_path / "ckpt"), image, str(tmp_path / "o.png"))
    assert len(result["box"]) == 4 and (tmp_path / "o.png").exists()
