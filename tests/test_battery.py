"""Reliability battery, applied automatically to every method in the registry (issue: reliability battery).

A new method is picked up with no edit here: it only needs its registry line and a tiny config in
tests/tiny_configs.py (the first test fails loudly without one). A method whose training step reads the process
group (cross-batch state) must also have a 2-process equivalence test in its own test file (checked in
`test_forward_train_step_and_loss`).
"""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import hf_ssl  # noqa: F401
from hf_ssl.modeling.registry import METHODS, get_method
from hf_ssl.training.arguments import SSLTrainingArguments
from hf_ssl.training.data import (SSLDataCollator, SSLViewDataset, build_view_generator, load_image_stream,
                                  materialize_builtin)
from hf_ssl.training.trainer import SSLTrainer
from tiny_configs import TINY_CONFIGS, tiny_config

ALL = sorted(METHODS)


def test_registry_has_tiny_configs():
    missing = sorted(set(METHODS) - set(TINY_CONFIGS))
    assert not missing, f"add tiny configs for {missing} to tests/tiny_configs.py"


def _batch(config, n=4, seed=0):
    """A real batch from the method's own view policy on the method's default data (built-in digits unless the
    method names another built-in source, e.g. clips for video methods)."""
    spec = get_method(config.model_type)
    policy = build_view_generator(config)
    mode = {1: "L", 3: "RGB"}.get(config.num_channels, "RGB")
    ds = SSLViewDataset(load_image_stream(spec.default_dataset, split="test", shuffle_buffer=0), policy, seed=seed,
                        image_mode=mode)
    examples = []
    for example in ds:
        if example.get("_empty"):
            continue
        examples.append(example)
        if len(examples) == n:
            break
    batch = SSLDataCollator()(examples)
    batch.pop("num_skipped")
    return batch


def _global_view(batch, model=None):
    """The first view of the model's main input (`main_input_name`: images, clips, ...)."""
    key = getattr(model, "main_input_name", "pixel_values") if model is not None else "pixel_values"
    v = batch[key]
    return v[0] if isinstance(v, list) else v


def _model(name, seed=0, **overrides):
    torch.manual_seed(seed)
    return get_method(name).model_class(tiny_config(name, **overrides))


@pytest.mark.parametrize("name", ALL)
def test_save_load_equality_safetensors_only(name, tmp_path):
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    model = _model(name).eval()
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    get_method(name).image_processor_class.from_ssl_config(model.config).save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path, use_safetensors=True).eval()
    assert type(reloaded) is type(model)
    sd1, sd2 = model.state_dict(), reloaded.state_dict()
    assert sd1.keys() == sd2.keys()
    for k in sd1:
        assert torch.equal(sd1[k], sd2[k]), k
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == \
        [n for n, p in reloaded.named_parameters() if not p.requires_grad]  # frozen stays frozen
    x = _global_view(_batch(model.config), model)
    # same weights, same input: equal up to float summation order (weights loaded from safetensors can sit at other
    # memory alignments, and oneDNN may then pick another kernel, e.g. for EfficientNet's depthwise convolutions)
    f1, f2 = model.get_input_features(x), reloaded.get_input_features(x)
    assert torch.allclose(f1, f2, rtol=1e-5, atol=1e-5 * float(f1.abs().max()))
    assert AutoConfig.from_pretrained(tmp_path).to_dict()["augmentation"] == model.config.augmentation
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(processor) is get_method(name).image_processor_class


DDP_TEST = re.compile(r"\b(run_distributed|run_ranks)\(")


@pytest.mark.parametrize("name", ALL)
def test_forward_train_step_and_loss(name, monkeypatch):
    """A training step gives a finite loss and encoder gradients. It also finds out whether the step reads the
    process group (every collective of hf_ssl goes through `losses.is_distributed`: gathered negatives, queues,
    all-reduced centres or Sinkhorn sums): such a method has cross-batch state, and its test file must hold a
    2-process (gloo) equivalence test, so a new method with cross-batch state cannot land without one."""
    from hf_ssl.modeling import losses

    consulted = []
    real = losses.is_distributed
    monkeypatch.setattr(losses, "is_distributed", lambda: consulted.append(1) or real())
    model = _model(name).train()
    batch = _batch(model.config, n=4)
    out = model(**batch)
    assert out.loss is not None and torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.encoder.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads), "no gradient reached the encoder"
    assert out.metrics is None or all(not torch.is_tensor(v) or not v.requires_grad for v in out.metrics.values())
    model.on_step_end(1, 10)
    if consulted:
        path = os.path.join(os.path.dirname(__file__), f"test_{name}.py")
        source = open(path).read() if os.path.exists(path) else ""
        assert DDP_TEST.search(source), (
            f"{name}'s training step uses cross-process state (losses.is_distributed was consulted) but "
            f"tests/test_{name}.py has no 2-process equivalence test (ddp_utils.run_ranks / run_distributed)")


# A loss made of a continuous part and a part built on discrete pseudo-labels of the features can move a lot under
# bfloat16 rounding at random init (the labels flip), which says nothing about the precision of the loss code: for
# such a method the continuous part (a metric of the step) is compared instead.
BF16_COMPARED_PART = {
    "solider": "dino_loss",  # the semantic term's labels are 2-means / k-means clusters of near-equal token norms
}


@pytest.mark.parametrize("name", ALL)
def test_bf16_autocast_training_step(name):
    """The mixed-precision step of `SSLTrainingArguments(bf16=True)` (torch.autocast, float32 weights), on the CPU:
    it runs (no dtype clash in custom autograd functions, index writes or buffers), the loss comes back in float32
    (losses, counts and Sinkhorn / softmax statistics are not left in bfloat16), it stays close to the float32 loss
    of the same weights, batch and random draws, and the gradients are finite and reach the encoder."""
    import copy

    model = _model(name).train()
    mixed = copy.deepcopy(model)
    batch = _batch(model.config, n=4)
    torch.manual_seed(1)
    ref = model(**batch)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mixed(**batch)
    assert out.loss.dtype == torch.float32, f"{name} returns a {out.loss.dtype} loss under autocast"
    assert torch.isfinite(out.loss)
    part = BF16_COMPARED_PART.get(name)
    a, b = (float(ref.loss.detach()), float(out.loss.detach())) if part is None else (float(ref.metrics[part]), float(out.metrics[part]))
    assert abs(b - a) <= 0.05 * abs(a) + 0.02, f"{name}: float32 {part or 'loss'} {a:.4f}, bf16 autocast {b:.4f}"
    out.loss.backward()  # outside the autocast region, as the Trainer runs it
    grads = [p.grad for p in mixed.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert all(p.dtype == torch.float32 for p in mixed.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in mixed.encoder.parameters())
    mixed.on_step_end(1, 10)


@pytest.mark.parametrize("name", ALL)
def test_eval_mode_batch_equivalence(name):
    model = _model(name).eval()
    x = _global_view(_batch(model.config, n=4), model)
    full = model.get_input_features(x)
    single = torch.cat([model.get_input_features(x[i: i + 1]) for i in range(len(x))])
    assert torch.allclose(full, single, atol=1e-5)


def test_export_encoder_reloads_without_hf_ssl(tmp_path):
    """Every method's exported encoder loads with plain transformers in a process that never imports hf_ssl,
    and gives the same pooled features."""
    cases = []
    for name in ALL:
        model = _model(name).eval()
        d = tmp_path / name
        model.export_encoder(d)
        x = _global_view(_batch(model.config, n=2), model)
        # a method whose vanilla export takes another input says which: `export_check_input(x)` gives the stock
        # encoder's input, which the model's features are computed on too (ChAda-ViT: one channel; SMTC: frames), or
        # a pair (model input, stock input) when only the layout differs (volumes `[B, C, D, H, W]` -> VideoMAE clips)
        converted = getattr(model, "export_check_input", lambda v: v)(x)
        x_model, x_stock = converted if isinstance(converted, tuple) else (converted, converted)
        torch.save({"x": x_stock, "features": model.get_input_features(x_model)}, d / "expected.pt")
        cases.append(str(d))
    script = """
import json, sys, torch
sys.modules["hf_ssl"] = None  # importing hf_ssl would fail loudly
from transformers import AutoModel, AutoImageProcessor
for d in sys.argv[1:]:
    enc = AutoModel.from_pretrained(d).eval()
    AutoImageProcessor.from_pretrained(d)
    info = json.load(open(d + "/hf_ssl_export.json"))
    pooling, key = info["feature_pooling"], info.get("input_name", "pixel_values")
    exp = torch.load(d + "/expected.pt")
    kwargs = {key: exp["x"]}
    if enc.config.model_type == "vit":
        kwargs["interpolate_pos_encoding"] = True
    with torch.no_grad():
        out = enc(**kwargs)
    h = getattr(out, "last_hidden_state", None)
    if enc.config.model_type == "vit":
        feats = h[:, 0] if pooling == "cls" else h[:, 1:].mean(1)
    elif getattr(out, "pooler_output", None) is not None:
        feats = out.pooler_output.flatten(1)
    else:  # token models without a pooler (e.g. VideoMAE): mean over all tokens
        feats = h.mean(1)
    assert torch.allclose(feats, exp["features"], atol=1e-5), d
print("ok", len(sys.argv) - 1)
"""
    proc = subprocess.run([sys.executable, "-c", script, *cases], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == f"ok {len(ALL)}"


def _default_files(name, per_class=6, classes=2):
    """Real files of the method's default built-in data (images, or clips / volumes stored as multi-frame files),
    `per_class` from each of the first `classes` label folders of its test split."""
    source = get_method(name).default_dataset
    assert source.startswith("builtin:"), "a method's default dataset must be a built-in (offline) source"
    root = os.path.join(materialize_builtin(source.split(":", 1)[1]), "test")
    out = []
    for label in sorted(os.listdir(root))[:classes]:
        files = sorted(os.listdir(os.path.join(root, label)))[:per_class]
        assert len(files) == per_class
        out.append((label, [os.path.join(root, label, f) for f in files]))
    return out


@pytest.mark.parametrize("name", ALL)
def test_stream_with_corrupt_images_finishes_and_counts(name, tmp_path):
    root = tmp_path / "data"
    groups = _default_files(name)
    ext = os.path.splitext(groups[0][1][0])[1]
    for label, files in groups:
        (root / label).mkdir(parents=True)
        for i, f in enumerate(files):
            shutil.copyfile(f, root / label / f"img{i}{ext}")
    first = groups[0][1][0]
    (root / groups[0][0] / f"a_zero{ext}").write_bytes(b"")  # sorted before the good files of its class
    (root / groups[0][0] / f"b_truncated{ext}").write_bytes(open(first, "rb").read()[:50])
    (root / groups[1][0] / f"a_garbage{ext}").write_bytes(b"\x89PNG not really")
    config = tiny_config(name)
    torch.manual_seed(0)
    model = get_method(name).model_class(config)
    mode = {1: "L", 3: "RGB"}.get(config.num_channels, "RGB")
    ds = SSLViewDataset(load_image_stream(str(root), shuffle_buffer=0), build_view_generator(config), image_mode=mode)
    args = SSLTrainingArguments(output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=4,
                                save_strategy="no", logging_steps=1, disable_tqdm=True)
    trainer = SSLTrainer(model=model, args=args, train_dataset=ds)
    trainer.train()
    assert trainer.skipped_images == 3  # 12 good files = 3 batches; all 3 bad files counted, none lost
    assert trainer.state.log_history[-2]["skipped_images"] == 3


@pytest.mark.parametrize("name", ALL)
def test_resume_equals_uninterrupted(name, tmp_path):
    def make(out, save_steps):
        config = tiny_config(name)
        torch.manual_seed(0)
        model = get_method(name).model_class(config)
        ds = SSLViewDataset(load_image_stream(get_method(name).default_dataset, seed=0, shuffle_buffer=32),
                            build_view_generator(config), seed=0)
        args = SSLTrainingArguments(output_dir=str(out), max_steps=4, per_device_train_batch_size=4,
                                    learning_rate=1e-3, logging_steps=1, save_steps=save_steps,
                                    save_strategy="steps", disable_tqdm=True, seed=0)
        return SSLTrainer(model=model, args=args, train_dataset=ds)

    full = make(tmp_path / "full", 2)  # also writes checkpoint-2 on its way (saving consumes no randomness)
    full.train()
    resumed = make(tmp_path / "resumed", 2)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    ref, got = full.model.state_dict(), resumed.model.state_dict()
    for key in ref:
        assert torch.allclose(ref[key].float(), got[key].float(), atol=1e-5), key
    a = [h["loss"] for h in full.state.log_history if "loss" in h]
    b = [h["loss"] for h in resumed.state.log_history if "loss" in h]
    assert b == pytest.approx(a, abs=1e-4)


def _nonsense_overrides(config):
    """Generic nonsense values derived from the config's own fields."""
    out = []
    for key, value in config.to_dict().items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if "temperature" in key:
            out.append((key, -0.1))
        elif key == "mask_ratio":
            out.append((key, 1.0))
    return out


@pytest.mark.parametrize("name", ALL)
def test_nonsense_configs_raise_at_config_time(name):
    spec = get_method(name)
    base = dict(TINY_CONFIGS[name])
    for key, bad in _nonsense_overrides(spec.config_class(**base)):
        with pytest.raises(ValueError):
            spec.config_class(**{**base, key: bad})
    with pytest.raises(ValueError):
        spec.config_class(**{**base, "backbone_config": "not-a-backbone"})
    with pytest.raises(ValueError):
        spec.config_class(**{**base, "backbone_config": {"model_type": "no_such_model_type"}})
    with pytest.raises(ValueError):  # channel mismatch between config and backbone
        bb = dict(base["backbone_config"], num_channels=base.get("num_channels", 3) + 1)
        spec.config_class(**{**base, "backbone_config": bb})


@pytest.mark.parametrize("name", ALL)
def test_wrong_channel_count_is_a_clear_error(name):
    model = _model(name).eval()
    dim = model.input_channel_dim
    if dim is None:
        pytest.skip(f"{name}'s input has no channel axis")
    x = _global_view(_batch(model.config, n=2), model)
    shape = list(x.shape)
    shape[dim] += 1
    with pytest.raises(ValueError, match="channel"):
        model.get_input_features(torch.randn(*shape))
