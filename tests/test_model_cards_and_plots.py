"""Tests of hf_ssl.model_cards (rendering / Hub parsing) and hf_ssl.utils.plotting (PIL-only figures)."""

import math

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image

from hf_ssl.model_cards import render_model_card, write_model_card
from hf_ssl.utils.plotting import PALETTE, plot_curves, plot_embedding_map, save_image_grid

CARD_KWARGS = dict(
    method_name="SwAV",
    model_type="swav",
    paper_title="Unsupervised Learning of Visual Features by Contrasting Cluster Assignments",
    paper_url="https://arxiv.org/abs/2006.09882",
    citation="@inproceedings{caron2020swav,\n  title={SwAV},\n  author={Caron, Mathilde},\n  year={2020}\n}",
    backbone="ResNet-18",
    dataset="cifar10",
    hyperparameters={"learning_rate": 0.0005, "per_device_train_batch_size": 256, "num_crops": [2, 6]},
    metrics={"knn_accuracy": 0.8125, "linear_probe_accuracy": 0.875},
    loss_curve="loss_curve.png",
    repo_id="someone/swav-resnet18-cifar10",
    deviations="Prototype queue disabled.",
)


def _count_color(image: Image.Image, color, tol: int = 40) -> int:
    arr = np.asarray(image.convert("RGB")).astype(int)
    return int((np.abs(arr - np.array(color)).max(axis=-1) <= tol).sum())


def test_model_card_renders_and_parses():
    text = render_model_card(**CARD_KWARGS)
    data = ModelCard(text).data.to_dict()
    assert data["library_name"] == "hf_ssl"
    assert data["pipeline_tag"] == "image-feature-extraction"
    assert data["datasets"] == ["cifar10"] and data["license"] == "apache-2.0"
    assert {"self-supervised-learning", "image-feature-extraction", "hf_ssl", "swav"} <= set(data["tags"])
    for needle in ("0.8125", "0.875", "knn_accuracy", "learning_rate", "0.0005", "256", "2, 6",
                   "https://arxiv.org/abs/2006.09882", "![Training loss curve](loss_curve.png)",
                   "@inproceedings{caron2020swav", 'AutoModel.from_pretrained("someone/swav-resnet18-cifar10")',
                   "import hf_ssl", "hf-ssl finetune", "Prototype queue disabled.", "## Limitations"):
        assert needle in text, needle
    assert "{name: tuple(t.shape)" in text  # escaped literal braces of the template survive
    assert "{" + "model_ref}" not in text


def test_model_card_omits_empty_sections(tmp_path):
    kwargs = dict(CARD_KWARGS, hyperparameters={}, metrics={}, loss_curve=None, deviations="", citation="")
    path = write_model_card(tmp_path / "out", **kwargs)
    assert path == tmp_path / "out" / "README.md"
    text = path.read_text()
    for heading in ("Evaluation", "Training hyperparameters", "Training curve", "Deviations", "Citation"):
        assert f"## {heading}" not in text
    assert "\n\n\n" not in text
    assert ModelCard.load(path).data.to_dict()["library_name"] == "hf_ssl"


def test_plot_curves(tmp_path):
    steps = list(range(0, 500, 5))
    series = {
        "train": [(s, 3 * math.exp(-s / 100) + 0.2) for s in steps],
        "val": [(0, 3.0), (100, float("nan")), (200, 0.8), (300, 0.5)],
    }
    path = plot_curves(series, tmp_path / "curves.png", "Loss", "step", "loss", size=(640, 360))
    image = Image.open(path)
    image.load()
    assert image.format == "PNG" and image.size == (640, 360)
    assert np.asarray(image.convert("L")).var() > 0
    assert _count_color(image, PALETTE[0]) > 200  # the "train" line
    assert _count_color(image, PALETTE[1]) > 50  # the "val" line/markers


@pytest.mark.parametrize(
    "series",
    [{"one": [(3.0, 0.5)]}, {"flat": [(0, 1.0), (1, 1.0), (2, 1.0)]}, {"nan": [(0, float("nan"))]}, {}],
)
def test_plot_curves_edge_cases(tmp_path, series):
    path = plot_curves(series, tmp_path / "edge.png", "edge", "x", "y", size=(320, 240))
    image = Image.open(path)
    assert image.size == (320, 240) and np.asarray(image.convert("L")).var() > 0
    if series and "nan" not in series:
        assert _count_color(image, PALETTE[0]) > 10


def test_plot_embedding_map(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    embeddings = torch.tensor(rng.normal(size=(3, 16)) * 5)[labels] + torch.randn(300, 16)
    path = plot_embedding_map(embeddings, labels, tmp_path / "emb.png", "PCA", size=(500, 400))
    image = Image.open(path)
    assert image.size == (500, 400) and np.asarray(image.convert("L")).var() > 0
    for color in PALETTE[:3]:
        assert _count_color(image, color) > 50


def test_save_image_grid(tmp_path):
    red = Image.new("RGB", (8, 8), (255, 0, 0))
    green = torch.zeros(3, 8, 8)
    green[1] = 1.0
    gray = torch.full((1, 8, 8), 0.5)
    path = save_image_grid([red, green, gray], tmp_path / "grid.png", nrow=2, padding=2)
    image = Image.open(path).convert("RGB")
    assert image.size == (2 * 8 + 3 * 2, 2 * 8 + 3 * 2)
    assert image.getpixel((2 + 4, 2 + 4)) == (255, 0, 0)
    assert image.getpixel((2 + 8 + 2 + 4, 2 + 4)) == (0, 255, 0)
    assert image.getpixel((2 + 4, 2 + 8 + 2 + 4)) == (128, 128, 128)
    captioned = Image.open(
        save_image_grid([red, green], tmp_path / "cap.png", nrow=2, captions=["a", "b"], image_size=32)
    )
    assert captioned.height > 32 and np.asarray(captioned.convert("L")).var() > 0
    with pytest.raises(ValueError):
        save_image_grid([red], tmp_path / "bad.png", captions=["a", "b"])
