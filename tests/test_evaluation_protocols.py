"""Evaluation protocols beyond plain k-NN: the DINOv2-radiology study's few-shot + PEFT protocol
(`hf-ssl evaluate --protocol radiology`)."""

import json

import numpy as np
import pytest

from hf_ssl.modeling.registry import get_method
from hf_ssl.training.evaluation import few_shot_metrics
from tiny_configs import tiny_config


def _clusters(n_per_class, classes=4, dim=4, spread=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centers = np.eye(classes, dim) * 5
    y = np.repeat(np.arange(classes), n_per_class)
    x = centers[y] + spread * rng.standard_normal((len(y), dim))
    return x.astype(np.float32), y


def test_few_shot_on_separable_features_is_perfect_even_with_one_shot():
    train, test = _clusters(30), _clusters(10, seed=1)
    m = few_shot_metrics(train, test, shots=(1, 4), trials=3)
    for n in (1, 4):
        assert m[f"fewshot_{n}_knn_accuracy"] == pytest.approx(1.0)
        assert m[f"fewshot_{n}_linear_accuracy"] == pytest.approx(1.0)
        assert m[f"fewshot_{n}_knn_accuracy_std"] == pytest.approx(0.0)


def test_few_shot_on_label_noise_features_is_near_chance():
    rng = np.random.default_rng(0)
    xtr, ytr = rng.standard_normal((200, 16)).astype(np.float32), rng.integers(0, 4, 200)
    xte, yte = rng.standard_normal((400, 16)).astype(np.float32), rng.integers(0, 4, 400)
    m = few_shot_metrics((xtr, ytr), (xte, yte), shots=(2,), trials=4)
    assert 0.1 < m["fewshot_2_knn_accuracy"] < 0.4  # chance is 0.25


def test_few_shot_uses_exactly_n_per_class(monkeypatch):
    import hf_ssl.training.evaluation as ev

    seen = []
    real = ev.knn_and_linear_metrics

    def spy(train, test, **kw):
        seen.append((np.bincount(train[1], minlength=4), kw["k"]))
        return real(train, test, **kw)

    monkeypatch.setattr(ev, "knn_and_linear_metrics", spy)
    train, test = _clusters(30), _clusters(5, seed=1)
    few_shot_metrics(train, test, shots=(3,), trials=2, k=20)
    assert len(seen) == 2
    for counts, k in seen:
        assert counts.tolist() == [3, 3, 3, 3]
        assert k == 12  # k is capped at the support size


def test_few_shot_rejects_zero_shots():
    with pytest.raises(ValueError, match=">= 1"):
        few_shot_metrics(_clusters(3), _clusters(3), shots=(0,))


def test_cli_radiology_protocol(tmp_path, capsys):
    from hf_ssl.training.cli import main

    model = get_method("swav").model_class(tiny_config("swav"))
    model.save_pretrained(tmp_path / "ckpt")
    get_method("swav").image_processor_class.from_ssl_config(model.config).save_pretrained(tmp_path / "ckpt")
    code = main(["evaluate", str(tmp_path / "ckpt"), "--protocol", "radiology", "--few-shot", "1", "2",
                 "--few-shot-trials", "2", "--peft-steps", "2", "--output-dir", str(tmp_path / "lora")])
    assert code == 0
    out = capsys.readouterr().out
    metrics = json.loads(out[out.rindex("{\n  \"knn_accuracy\""):])  # after the Trainer's own log lines
    for key in ("knn_accuracy", "linear_probe_accuracy", "fewshot_1_knn_accuracy", "fewshot_2_linear_accuracy",
                "peft_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert (tmp_path / "lora" / "adapter_config.json").exists()
