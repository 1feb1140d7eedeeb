"""Tests of hf_ssl.metrics: weighted k-NN and linear-probe accuracy (plain helpers and evaluate modules)."""

import math

import numpy as np
import pytest
import torch

from hf_ssl.metrics import available_metrics, knn_accuracy, linear_probe_accuracy, load_metric
from hf_ssl.metrics._core import knn_scores


def _clusters(n_train=400, n_test=200, n_classes=10, dim=32, spread=10.0, seed=0):
    """Well-separated Gaussian clusters (class centres far apart relative to unit noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)) * spread
    y_train = rng.integers(0, n_classes, n_train)
    y_test = rng.integers(0, n_classes, n_test)
    x_train = (centres[y_train] + rng.normal(size=(n_train, dim))).astype(np.float32)
    x_test = (centres[y_test] + rng.normal(size=(n_test, dim))).astype(np.float32)
    return x_train, y_train, x_test, y_test


# Hand-computed case: query q = (1, 0.2) / |.|; cosine similarities to the 4 train points are
# s0 = 0.98058 (label 0), s1 = 0.19612 (label 1), s2 = 0.83205 (label 1), s3 = -0.98058 (label 0).
TRAIN = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]]
TRAIN_LABELS = [0, 1, 1, 0]
QUERY = [[1.0, 0.2]]
S0, S1, S2, S3 = 1 / math.sqrt(1.04), 0.2 / math.sqrt(1.04), 1.2 / math.sqrt(2.08), -1 / math.sqrt(1.04)


def test_available_metrics():
    names = available_metrics()
    assert names == sorted(names)  # every metric folder under hf_ssl/metrics, sorted
    assert {"knn_accuracy", "linear_probe", "retrieval_recall", "zero_shot_accuracy", "genecis"} <= set(names)
    with pytest.raises(ValueError, match="knn_accuracy, linear_probe"):
        load_metric("accuracy")


def test_knn_separated_clusters_is_perfect():
    result = knn_accuracy(*_clusters())
    assert result == {"knn_accuracy": 1.0, "knn_top5": 1.0}


def test_knn_random_labels_is_near_chance():
    x_train, _, x_test, _ = _clusters(seed=1)
    rng = np.random.default_rng(1)
    result = knn_accuracy(x_train, rng.integers(0, 10, len(x_train)), x_test, rng.integers(0, 10, len(x_test)))
    assert result["knn_accuracy"] < 0.5


def test_knn_evaluate_module_matches_helper():
    x_train, y_train, x_test, y_test = _clusters(n_classes=6, spread=1.0, seed=2)  # overlapping: acc < 1
    expected = knn_accuracy(x_train, y_train, x_test, y_test, k=7, temperature=0.2)
    metric = load_metric("knn_accuracy", keep_in_memory=True)
    result = metric.compute(
        predictions=x_test.tolist(), references=y_test.tolist(),
        train_embeddings=x_train, train_labels=y_train, k=7, temperature=0.2,
    )
    assert result == expected
    assert 0.0 < result["knn_accuracy"] < 1.0 and set(result) == {"knn_accuracy", "knn_top5"}


def test_knn_hand_computed_votes():
    # k=1: nearest neighbour is train point 0 -> class 0.
    assert knn_accuracy(TRAIN, TRAIN_LABELS, QUERY, [0], k=1) == {"knn_accuracy": 1.0}
    # k=3 with T=0.07: exp(s0/T) dominates exp(s2/T) + exp(s1/T) -> class 0.
    assert knn_accuracy(TRAIN, TRAIN_LABELS, QUERY, [0], k=3, temperature=0.07)["knn_accuracy"] == 1.0
    # k=3 with T=1: e^0.981 = 2.67 < e^0.832 + e^0.196 = 3.51 -> class 1.
    assert knn_accuracy(TRAIN, TRAIN_LABELS, QUERY, [0], k=3, temperature=1.0)["knn_accuracy"] == 0.0
    assert knn_accuracy(TRAIN, TRAIN_LABELS, QUERY, [1], k=3, temperature=1.0)["knn_accuracy"] == 1.0
    # Exact vote values (normalised by the top neighbour's weight).
    scores = knn_scores(torch.tensor(TRAIN), torch.tensor(TRAIN_LABELS), torch.tensor(QUERY), 2, k=3, temperature=1.0)
    expected = [1.0, math.exp(S2 - S0) + math.exp(S1 - S0)]
    assert scores[0].tolist() == pytest.approx(expected, rel=1e-5)
    # k larger than the train set is clipped to 4: class 0 gets e^s0 + e^s3, class 1 gets e^s1 + e^s2.
    scores = knn_scores(torch.tensor(TRAIN), torch.tensor(TRAIN_LABELS), torch.tensor(QUERY), 2, k=100, temperature=1.0)
    expected = [1.0 + math.exp(S3 - S0), math.exp(S2 - S0) + math.exp(S1 - S0)]
    assert scores[0].tolist() == pytest.approx(expected, rel=1e-5)
    assert knn_accuracy(TRAIN, TRAIN_LABELS, QUERY, [1], k=100, temperature=1.0)["knn_accuracy"] == 1.0


def test_knn_chunking_does_not_change_result():
    x_train, y_train, x_test, y_test = _clusters(n_classes=6, spread=1.0, seed=3)
    full = knn_accuracy(x_train, y_train, x_test, y_test)
    assert knn_accuracy(x_train, y_train, x_test, y_test, chunk_size=7) == full


def test_knn_input_errors():
    with pytest.raises(ValueError, match="dimensions differ"):
        knn_accuracy(np.zeros((4, 3)), [0, 1, 0, 1], np.zeros((2, 5)), [0, 1])
    with pytest.raises(ValueError, match="empty"):
        knn_accuracy(np.zeros((0, 3)), [], np.zeros((2, 3)), [0, 1])
    with pytest.raises(ValueError, match="train_labels"):
        knn_accuracy(np.zeros((4, 3)), [0, 1], np.zeros((2, 3)), [0, 1])
    with pytest.raises(ValueError, match="references"):
        knn_accuracy(np.zeros((4, 3)), [0, 1, 0, 1], np.zeros((2, 3)), [0])
    with pytest.raises(ValueError, match="k must be"):
        knn_accuracy(np.ones((4, 3)), [0, 1, 0, 1], np.ones((2, 3)), [0, 1], k=0)
    metric = load_metric("knn_accuracy", keep_in_memory=True)
    with pytest.raises(ValueError, match="dimensions differ"):
        metric.compute(predictions=[[1.0, 2.0]], references=[0], train_embeddings=[[1.0]], train_labels=[0])


def test_linear_probe_separable_and_random():
    x_train, y_train, x_test, y_test = _clusters(spread=3.0, seed=4)
    assert linear_probe_accuracy(x_train, y_train, x_test, y_test)["linear_probe_accuracy"] >= 0.95
    rng = np.random.default_rng(4)
    random = linear_probe_accuracy(
        x_train, rng.integers(0, 10, len(x_train)), x_test, rng.integers(0, 10, len(x_test)), max_iter=50
    )
    assert random["linear_probe_accuracy"] < 0.3


def test_linear_probe_does_not_depend_on_the_feature_scale():
    """Standardisation makes the probe scale-free, including the test for constant features: a random-init encoder
    in eval mode can emit features of size 1e-13 (ALIGN's cpu-demo EfficientNet), which an absolute threshold
    treated as all-constant (accuracy at chance). A truly constant column is still ignored."""
    x_train, y_train, x_test, y_test = _clusters(spread=3.0, seed=4)
    base = linear_probe_accuracy(x_train, y_train, x_test, y_test)["linear_probe_accuracy"]
    assert base >= 0.95
    for scale in (1e-13, 1e6):
        got = linear_probe_accuracy(x_train * scale, y_train, x_test * scale, y_test)["linear_probe_accuracy"]
        assert got == pytest.approx(base, abs=0.02), scale
    padded = [np.concatenate([x, np.full((len(x), 1), 5.0)], axis=1) for x in (x_train, x_test)]
    got = linear_probe_accuracy(padded[0] * 1e-13, y_train, padded[1] * 1e-13, y_test)["linear_probe_accuracy"]
    assert got == pytest.approx(base, abs=0.02)


def test_linear_probe_evaluate_module_matches_helper_and_is_deterministic():
    x_train, y_train, x_test, y_test = _clusters(n_classes=4, spread=0.5, seed=5)
    expected = linear_probe_accuracy(x_train, y_train, x_test, y_test, c=1e-3)
    assert linear_probe_accuracy(x_train, y_train, x_test, y_test, c=1e-3) == expected
    metric = load_metric("linear_probe", keep_in_memory=True)
    result = metric.compute(
        predictions=x_test.tolist(), references=y_test.tolist(), train_embeddings=x_train, train_labels=y_train, c=1e-3
    )
    assert result == expected and set(result) == {"linear_probe_accuracy"}
    with pytest.raises(ValueError, match="dimensions differ"):
        linear_probe_accuracy(x_train, y_train, x_test[:, :5], y_test)
