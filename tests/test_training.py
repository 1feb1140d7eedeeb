"""SSLTrainer end to end on the built-in real data: training, atomic checkpoints (resume == uninterrupted is in
the battery, for every method), k-NN evaluation, the CLI, LoRA fine-tuning and Hub push/reload against the loopback server."""

import json
import os
import subprocess
import sys

import pytest
import torch

import hf_ssl  # noqa: F401
from hf_ssl.modeling.registry import get_method
from hf_ssl.training.arguments import SSLTrainingArguments
from hf_ssl.training.data import SSLViewDataset, build_view_generator, labeled_eval_dataset, load_image_stream
from hf_ssl.training.trainer import SSLTrainer
from tiny_configs import tiny_config


def _trainer(method, out, max_steps, save_steps=None, seed=0, **kw):
    config = tiny_config(method)
    torch.manual_seed(seed)
    model = get_method(method).model_class(config)
    ds = SSLViewDataset(load_image_stream("builtin:digits", seed=seed, shuffle_buffer=64), build_view_generator(config),
                        seed=seed)
    args = SSLTrainingArguments(output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=8,
                                learning_rate=1e-3, logging_steps=1, save_steps=save_steps or max_steps,
                                save_strategy="steps", disable_tqdm=True, seed=seed, **kw)
    return SSLTrainer(model=model, args=args, train_dataset=ds)


def test_checkpoints_are_written_atomically(tmp_path):
    trainer = _trainer("swav", tmp_path / "run", max_steps=2, save_steps=1)
    trainer.train()
    names = sorted(os.listdir(tmp_path / "run"))
    assert "checkpoint-1" in names and "checkpoint-2" in names
    assert ".staging" not in names  # the staging area is cleaned up after each rename
    ckpt = tmp_path / "run" / "checkpoint-2"
    assert (ckpt / "model.safetensors").exists() and (ckpt / "trainer_state.json").exists()
    assert (ckpt / "optimizer.pt").exists()
    # metrics of the model and the skip counter are logged
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert all("skipped_images" in h for h in logs) and all("swav_loss" in h for h in logs)


def test_on_step_end_called_every_optimizer_step(tmp_path, monkeypatch):
    trainer = _trainer("swav", tmp_path / "run", max_steps=3, gradient_accumulation_steps=2)
    calls = []
    original = trainer.model.on_step_end
    monkeypatch.setattr(trainer.model, "on_step_end", lambda s, m: (calls.append((s, m)), original(s, m)))
    trainer.train()
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_channels_last_training_matches_default_layout(tmp_path):
    """`channels_last=True` converts the ConvNet weights and image inputs, and trains to the same numbers."""
    losses = {}
    for flag in (False, True):
        trainer = _trainer("swav", tmp_path / f"run-{flag}", max_steps=2, channels_last=flag)
        if flag:
            convs = [m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d)]
            assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
        trainer.train()
        losses[flag] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses[True]) == 2
    assert losses[True] == pytest.approx(losses[False], rel=1e-3, abs=1e-4)


def test_bf16_mixed_precision_training_on_cpu(tmp_path, monkeypatch):
    """`bf16=True` trains under torch.autocast(bfloat16) with float32 master weights (the path GPU users take; the
    CPU runs it too), gives float32 losses close to the float32 run, and checkpoints float32 weights."""
    from safetensors.torch import load_file

    losses = {}
    for flag in (False, True):
        trainer = _trainer("swav", tmp_path / f"run-{flag}", max_steps=2, bf16=flag, use_cpu=True)
        seen = []
        forward = trainer.model.forward
        monkeypatch.setattr(trainer.model, "forward",
                            lambda *a, **k: (seen.append(torch.is_autocast_enabled("cpu")), forward(*a, **k))[1])
        trainer.train()
        assert seen == [flag, flag]
        losses[flag] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[True] == pytest.approx(losses[False], rel=0.05)
    saved = load_file(str(tmp_path / "run-True" / "checkpoint-2" / "model.safetensors"))
    assert all(t.dtype == torch.float32 for t in saved.values() if t.is_floating_point())


@pytest.mark.parametrize("method", ["swav", "mochi"])
def test_torch_compile_training_matches_eager(method, tmp_path):
    """`torch_compile=True` (`hf-ssl pretrain --compile`) trains the same numbers as eager mode. The backend is
    dynamo's "aot_eager" (graph capture and AOT autograd without code generation, so no C compiler is needed):
    it checks that the methods' forward passes, host-mirrored step state and `on_step_end` hooks survive tracing;
    inductor's code generation is torch's own concern."""
    import torch._dynamo

    losses = {}
    for flag in (False, True):
        torch._dynamo.reset()
        trainer = _trainer(method, tmp_path / f"run-{flag}", max_steps=3, torch_compile=flag,
                           **({"torch_compile_backend": "aot_eager"} if flag else {}))
        trainer.train()
        losses[flag] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        if flag:  # the step really ran through dynamo
            assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    assert len(losses[True]) == 3
    assert losses[True] == pytest.approx(losses[False], rel=1e-3, abs=1e-4)


def test_knn_evaluation_and_lars(tmp_path):
    config = tiny_config("swav")
    model = get_method("swav").model_class(config)
    args = SSLTrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=8, use_lars=True,
                                learning_rate=0.1, weight_decay=1e-4, weight_decay_end=1e-2, disable_tqdm=True,
                                save_strategy="no", eval_strategy="steps", eval_steps=2, knn_k=5, linear_probe=True)
    trainer = SSLTrainer(model=model, args=args,
                         train_dataset=SSLViewDataset(load_image_stream("builtin:digits"), build_view_generator(config)),
                         knn_train_dataset=labeled_eval_dataset("builtin:digits", "train", config, max_samples=200),
                         knn_eval_dataset=labeled_eval_dataset("builtin:digits", "test", config, max_samples=100))
    trainer.train()
    from hf_ssl.training.optim import LARS

    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # unwrap accelerate's wrapper
    assert isinstance(optimizer, LARS)
    decaying = [g["weight_decay"] for g in optimizer.param_groups if g.get("_hf_ssl_decays")]
    assert decaying and all(wd > 1e-4 for wd in decaying)  # cosine schedule moved towards weight_decay_end
    evals = [h for h in trainer.state.log_history if "eval_knn_accuracy" in h]
    assert evals and 0.0 <= evals[-1]["eval_knn_accuracy"] <= 1.0 and "eval_linear_probe_accuracy" in evals[-1]


def test_cli_pretrain_export_finetune_roundtrip(tmp_path):
    """The CLI default path in miniature: pretrain -> model card + export -> LoRA finetune -> plain peft reload."""
    from hf_ssl.training.cli import main

    out = tmp_path / "run"
    overrides = json.dumps(tiny_config("swav").to_diff_dict()["backbone_config"])
    code = main(["pretrain", "--output-dir", str(out), "--max-steps", "3", "--batch-size", "8",
                 "--set", f"backbone_config={overrides}", "image_size=32", "num_prototypes=16"])
    assert code == 0
    results = json.load(open(out / "results.json"))
    assert 0 <= results["knn_before"]["knn_accuracy"] <= 1 and 0 <= results["knn_after"]["knn_accuracy"] <= 1
    card = (out / "final" / "README.md").read_text()
    assert "SwAV" in card or "swav" in card
    assert "knn_accuracy" in card and (out / "final" / "loss_curve.png").exists()

    # the exported encoder is a stock checkpoint: fine-tune it with LoRA on a stock classification head
    from hf_ssl.training.downstream import finetune_with_lora

    lora_dir = tmp_path / "lora"
    metrics = finetune_with_lora(str(out / "encoder"), output_dir=str(lora_dir), max_steps=3, batch_size=16,
                                 disable_tqdm=True)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["skipped_images"] == 0
    assert (lora_dir / "adapter_config.json").exists()

    # reload with plain transformers + peft in a subprocess that never imports hf_ssl
    script = f"""
import sys, torch
from transformers import AutoModelForImageClassification
from peft import PeftModel
base = AutoModelForImageClassification.from_pretrained({str(out / 'encoder')!r}, num_labels=10)
model = PeftModel.from_pretrained(base, {str(lora_dir)!r}).eval()
torch.manual_seed(0)
x = torch.randn(2, 3, 32, 32)
torch.save({{"x": x, "logits": model(pixel_values=x).logits}}, {str(tmp_path / 'peft_out.pt')!r})
assert "hf_ssl" not in sys.modules
"""
    subprocess.run([sys.executable, "-c", script], check=True, env={**os.environ, "PYTHONPATH": ""})
    saved = torch.load(tmp_path / "peft_out.pt")
    from hf_ssl.training.downstream import build_lora_classifier
    from peft import PeftModel
    from transformers import AutoModelForImageClassification

    base = AutoModelForImageClassification.from_pretrained(str(out / "encoder"), num_labels=10)
    reloaded = PeftModel.from_pretrained(base, str(lora_dir)).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(pixel_values=saved["x"]).logits, saved["logits"], atol=1e-5)
    assert build_lora_classifier  # public helper is importable


def test_push_and_reload_through_hub(hub_env, tmp_path):
    """save_pretrained + card -> push_to_hub to the loopback Hub -> from_pretrained by repo id."""
    from huggingface_hub import ModelCard
    from transformers import AutoModel

    from hf_ssl.model_cards import write_model_card

    config = tiny_config("swav")
    model = get_method("swav").model_class(config).eval()
    folder = tmp_path / "ckpt"
    model.save_pretrained(folder)
    write_model_card(folder, method_name="SwAV", model_type=config.model_type, paper_title=config.paper_title,
                     paper_url=config.paper_url, citation=config.citation, backbone="resnet", dataset="digits",
                     hyperparameters={"lr": 1e-3}, metrics={"knn_accuracy": 0.5})
    from hf_ssl.training.cli import push_folder

    push_folder(str(folder), "user/tiny-swav")
    reloaded = AutoModel.from_pretrained("user/tiny-swav").eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(model.get_image_features(x), reloaded.get_image_features(x), atol=1e-6)
    card = ModelCard.load("user/tiny-swav")
    assert card.data.library_name == "hf_ssl" and "0.5" in card.text
    # export_encoder can push a vanilla encoder too
    model.export_encoder(tmp_path / "enc", push_to_hub=True, repo_id="user/tiny-swav-encoder")
    enc = AutoModel.from_pretrained("user/tiny-swav-encoder")
    assert type(enc).__name__ == "ResNetModel"


def test_cli_speed_flags_reach_the_trainer_arguments(tmp_path, monkeypatch):
    """`hf-ssl pretrain --bf16 --channels-last --compile` become `bf16` (with `use_cpu` where there is no
    accelerator: transformers refuses CPU bf16 otherwise), `channels_last` and `torch_compile` trainer arguments
    that SSLTrainingArguments accepts; without the flags nothing is added."""
    from hf_ssl.training import cli

    seen = []
    monkeypatch.setattr(cli, "run_pretraining", lambda **kw: seen.append(kw))
    cli.main(["pretrain", "--method", "swav", "--max-steps", "1", "--bf16", "--channels-last", "--compile"])
    cli.main(["pretrain", "--method", "swav", "--max-steps", "1"])
    extra = seen[0]["extra_args"]
    assert extra["bf16"] is True and extra["channels_last"] is True and extra["torch_compile"] is True
    assert extra.get("use_cpu", False) == (not torch.accelerator.is_available())
    assert seen[1]["extra_args"] == {}
    args = SSLTrainingArguments(output_dir=str(tmp_path), **{k: v for k, v in extra.items() if k != "torch_compile"})
    assert args.bf16 and args.channels_last
