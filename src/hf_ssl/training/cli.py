"""`hf-ssl` command line: pretrain, evaluate, finetune, export, push, list.

`hf-ssl pretrain` with no arguments trains SwAV on the built-in real digits dataset with a small ResNet on
CPU in a few minutes and prints k-NN accuracy of the random-init encoder and of the trained one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any, Dict, Optional

DEFAULT_METHOD = "swav"
DEMO_PRESET = "cpu-demo"  # method presets of this name hold small-data/CPU settings for the default run


def _load_ssl_model(path: str):
    """An hf_ssl checkpoint (any method) or an exported stock encoder wrapped for feature extraction."""
    import hf_ssl  # noqa: F401  (registers the Auto classes)
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(path)
    model = AutoModel.from_pretrained(path)
    if not config.model_type.startswith("hf_ssl_"):
        model = _StockEncoder(model, path)
    return model


class _StockEncoder:
    """Feature extraction for an exported (stock transformers) encoder, matching get_image_features."""

    def __init__(self, encoder, path):
        from types import SimpleNamespace

        self.encoder = encoder.eval()
        info = os.path.join(path, "hf_ssl_export.json")
        pooling = json.load(open(info)).get("feature_pooling", "cls") if os.path.exists(info) else "cls"
        pp = json.load(open(os.path.join(path, "preprocessor_config.json")))
        c = encoder.config
        self.config = SimpleNamespace(
            feature_pooling=pooling, num_channels=getattr(c, "num_channels", 3),
            image_size=pp.get("crop_size", {}).get("height", getattr(c, "image_size", 224)),
            image_mean=pp["image_mean"], image_std=pp["image_std"], augmentation={}, backbone_config=c)

    def parameters(self):
        return self.encoder.parameters()

    @property
    def training(self):
        return self.encoder.training

    def eval(self):
        self.encoder.eval()
        return self

    def train(self, mode=True):
        self.encoder.train(mode)
        return self

    def get_image_features(self, pixel_values):
        from ..modeling.backbones import encode

        return encode(self.encoder, pixel_values, self.config.feature_pooling)


def build_config(method: str, preset: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None):
    from ..modeling.registry import get_method

    spec = get_method(method)
    return spec.make_config(preset, **(overrides or {}))


def run_pretraining(method: str = DEFAULT_METHOD, dataset: Optional[str] = None, output_dir: Optional[str] = None,
                    preset: Optional[str] = DEMO_PRESET, config_overrides: Optional[Dict[str, Any]] = None,
                    max_steps: Optional[int] = None, batch_size: int = 64, learning_rate: Optional[float] = None,
                    weight_decay: float = 1e-6, eval_split: str = "test", knn_bank_size: Optional[int] = None,
                    num_workers: int = 0, eval_steps: Optional[int] = None, save_steps: Optional[int] = None,
                    resume: Optional[str] = None, seed: int = 0, push_to_hub: Optional[str] = None,
                    extra_args: Optional[Dict[str, Any]] = None, log=print, save: bool = True,
                    device_augmentation: bool = False) -> Dict[str, Any]:
    """Pretrain, evaluate before/after with k-NN, save the checkpoint + model card + exported encoder (unless
    `save=False`, for benchmarks that only want the numbers)."""
    import torch
    from transformers import set_seed

    from ..modeling.registry import get_method
    from .arguments import SSLTrainingArguments
    from .data import SSLViewDataset, build_view_generator, labeled_eval_dataset, load_image_stream
    from .evaluation import evaluate_representations
    from .trainer import SSLTrainer

    spec = get_method(method)
    dataset = dataset or spec.default_dataset  # builtin:digits unless the method names its own built-in data
    if preset and preset not in spec.presets:
        preset = None if preset == DEMO_PRESET else preset
    config = spec.make_config(preset, **(config_overrides or {}))
    output_dir = output_dir or os.path.join("hf-ssl-runs", spec.name)
    set_seed(seed)
    model = spec.model_class(config)
    # the demo preset may come with its own budget / learning rate (MethodSpec.demo_training)
    demo = spec.demo_training if preset == DEMO_PRESET else {}
    max_steps = max_steps if max_steps is not None else int(demo.get("max_steps", 400))
    lr = learning_rate if learning_rate is not None else float(demo.get("learning_rate", 1e-3))
    kwargs = dict(output_dir=output_dir, max_steps=max_steps, per_device_train_batch_size=batch_size,
                  per_device_eval_batch_size=256, learning_rate=lr, weight_decay=weight_decay,
                  warmup_steps=max(1, int(0.05 * max_steps)), lr_scheduler_type="cosine",
                  logging_steps=max(1, min(50, max_steps // 10)), save_strategy="steps",
                  save_steps=save_steps or max_steps, save_total_limit=2, seed=seed,
                  dataloader_num_workers=num_workers, eval_strategy="steps" if eval_steps else "no",
                  eval_steps=eval_steps)
    # any other demo_training key is a trainer argument of the demo run (e.g. `freeze_last_layer_steps`)
    kwargs.update({k: v for k, v in demo.items() if k not in ("max_steps", "learning_rate")})
    kwargs.update(extra_args or {})
    args = SSLTrainingArguments(**kwargs)

    mode = {1: "L", 3: "RGB"}.get(config.num_channels)
    views = build_view_generator(config, device_photometric=device_augmentation)
    train_ds = SSLViewDataset(load_image_stream(dataset, split="train", seed=seed), views,
                              seed=seed, image_mode=mode)
    knn_train = labeled_eval_dataset(dataset, "train", config, max_samples=knn_bank_size)
    knn_test = labeled_eval_dataset(dataset, eval_split, config)
    log(f"[hf-ssl] method={spec.name} backbone={config.backbone_config.model_type} dataset={dataset} "
        f"steps={max_steps} batch={batch_size} device={args.device}")

    before = evaluate_representations(model, knn_train, knn_test, k=args.knn_k, temperature=args.knn_temperature,
                                      linear_probe=args.linear_probe, device=args.device)
    log(f"[hf-ssl] k-NN accuracy before training (random init): {before['knn_accuracy']:.4f}")
    # a method's own task metric (e.g. object discovery FG-ARI for object-centric models), before and after
    task_metrics = getattr(model, "task_metrics", None)
    task_before = task_metrics(dataset, eval_split) if callable(task_metrics) else {}
    if task_before:
        log(f"[hf-ssl] task metrics before training (random init): {_fmt_metrics(task_before)}")
    trainer = SSLTrainer(model=model, args=args, train_dataset=train_ds, knn_train_dataset=knn_train,
                         knn_eval_dataset=knn_test)
    start = time.time()
    trainer.train(resume_from_checkpoint=resume)
    elapsed = time.time() - start
    after = trainer.evaluate()
    after = {k[len("eval_"):]: v for k, v in after.items() if k.startswith("eval_")}
    log(f"[hf-ssl] k-NN accuracy after {max_steps} steps: {after['knn_accuracy']:.4f} "
        f"(random init {before['knn_accuracy']:.4f}); {elapsed:.0f}s; skipped images: {trainer.skipped_images}")

    result = {"method": spec.name, "knn_before": before, "knn_after": after, "train_seconds": elapsed,
              "skipped_images": trainer.skipped_images, "output_dir": output_dir}
    if task_before:
        task_after = task_metrics(dataset, eval_split)
        log(f"[hf-ssl] task metrics after {max_steps} steps: {_fmt_metrics(task_after)} "
            f"(random init {_fmt_metrics(task_before)})")
        result.update(task_before=task_before, task_after=task_after)
        after.update({f"task_{k}": v for k, v in task_after.items()})
        before.update({f"task_{k}": v for k, v in task_before.items()})
    if save and trainer.is_world_process_zero():
        final_dir = os.path.join(output_dir, "final")
        save_run(trainer, final_dir, dataset=dataset, metrics={
            "knn_accuracy (random init)": before["knn_accuracy"], "knn_accuracy": after["knn_accuracy"],
            **{k: v for k, v in after.items() if k != "knn_accuracy"}})
        encoder_dir = os.path.join(output_dir, "encoder")
        model.export_encoder(encoder_dir)
        result.update(final_dir=final_dir, encoder_dir=encoder_dir)
        with open(os.path.join(output_dir, "results.json"), "w") as f:
            json.dump(result, f, indent=2)
        log(f"[hf-ssl] saved {final_dir} (model + card) and {encoder_dir} (vanilla transformers encoder)")
        if push_to_hub:
            push_folder(final_dir, push_to_hub)
            log(f"[hf-ssl] pushed to {push_to_hub}")
    return result


def _fmt_metrics(metrics: Dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if not k.startswith("num_"))


def save_run(trainer, save_directory: str, dataset: str, metrics: Dict[str, float]) -> str:
    """save_pretrained + image processor + loss curve + generated model card."""
    import shutil

    from ..model_cards import write_model_card
    from ..modeling.registry import get_method

    model = trainer.accelerator.unwrap_model(trainer.model)
    spec = get_method(model.config.model_type)
    model.save_pretrained(save_directory, safe_serialization=True)
    spec.image_processor_class.from_ssl_config(model.config).save_pretrained(save_directory)
    curve = os.path.join(trainer.args.output_dir, "loss_curve.png")
    loss_curve = None
    if os.path.exists(curve):
        shutil.copy(curve, os.path.join(save_directory, "loss_curve.png"))
        loss_curve = "loss_curve.png"
    args = trainer.args
    hyper = {"max_steps": args.max_steps, "per_device_train_batch_size": args.per_device_train_batch_size,
             "learning_rate": args.learning_rate, "weight_decay": args.weight_decay,
             "lr_scheduler": str(args.lr_scheduler_type), "optimizer": "LARS" if args.use_lars else str(args.optim),
             "image_size": model.config.image_size}
    hyper.update({k: v for k, v in model.config.to_diff_dict().items()
                  if isinstance(v, (int, float, str, bool)) and not k.startswith("_") and k not in hyper})
    cfg = model.config
    write_model_card(save_directory, method_name=spec.name, model_type=cfg.model_type, paper_title=cfg.paper_title,
                     paper_url=cfg.paper_url, citation=cfg.citation, backbone=cfg.backbone_config.model_type,
                     dataset=dataset, hyperparameters=hyper, metrics=metrics, loss_curve=loss_curve,
                     repo_id=None, deviations=_deviations(spec))
    return save_directory


def _deviations(spec) -> str:
    import importlib

    import re

    doc = importlib.import_module(spec.model_class.__module__.rsplit(".", 1)[0]).__doc__ or ""
    # the method folder's docstring section on deviations ("DEVIATIONS:", "Deviations from the paper", ...)
    match = re.search(r"^\s*(deviations\b.*)$", doc, flags=re.IGNORECASE | re.MULTILINE | re.DOTALL)
    return match.group(1).strip() if match else ""


def push_folder(folder: str, repo_id: str, private: Optional[bool] = None, token: Optional[str] = None) -> str:
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, exist_ok=True, private=private)
    info = api.upload_folder(folder_path=folder, repo_id=repo_id, commit_message="Upload with hf_ssl")
    return getattr(info, "commit_url", repo_id)


# ----------------------------------------------------------------------------------------------------
def _parse_overrides(items) -> Dict[str, Any]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
        out[key] = value
    return out


def _speed_arguments(args) -> Dict[str, Any]:
    """Trainer arguments of `--bf16 / --channels-last / --compile`. bf16 on a machine without an accelerator is
    CPU autocast, which transformers only accepts with `use_cpu=True`."""
    import torch

    extra: Dict[str, Any] = {}
    if args.bf16:
        extra["bf16"] = True
        accelerator = getattr(torch, "accelerator", None)
        if not (accelerator.is_available() if accelerator is not None else torch.cuda.is_available()):
            extra["use_cpu"] = True
    if args.channels_last:
        extra["channels_last"] = True
    if args.compile:
        extra["torch_compile"] = True
    return extra


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="hf-ssl", description=__doc__.strip().splitlines()[0])
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("pretrain", help="self-supervised pretraining (default: SwAV on built-in digits)")
    p.add_argument("--method", default=DEFAULT_METHOD)
    p.add_argument("--dataset", default=None, help="builtin:digits (default; video/volume methods default to their "
                   "own built-in data), a folder, parquet/tar glob or Hub id")
    p.add_argument("--preset", default=DEMO_PRESET, help="method preset (e.g. seer for swav); 'none' for paper defaults")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="config overrides (JSON values)")
    p.add_argument("--output-dir")
    p.add_argument("--max-steps", type=int, default=None,
                   help="optimizer steps (default: the cpu-demo preset's budget, else 400)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--weight-decay", type=float, default=1e-6)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--device-augmentation", action="store_true",
                   help="colour jitter / grayscale / blur / solarize batched on the training device instead of in "
                        "the CPU workers (two-view and multi-crop policies)")
    p.add_argument("--bf16", action="store_true",
                   help="bfloat16 mixed precision (autocast, float32 weights): GPUs, and CPUs with bfloat16 "
                        "instructions (avx512_bf16 / AMX); see benchmarks/README.md for measured speed-ups")
    p.add_argument("--channels-last", action="store_true",
                   help="channels-last memory format for ConvNet weights and image inputs")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (pays off on GPUs)")
    p.add_argument("--eval-steps", type=int)
    p.add_argument("--save-steps", type=int)
    p.add_argument("--resume", help="checkpoint folder to resume from")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--push-to-hub", metavar="REPO_ID")

    e = sub.add_parser("evaluate", help="k-NN / linear-probe accuracy of a checkpoint or exported encoder")
    e.add_argument("model")
    e.add_argument("--dataset", default="builtin:digits")
    e.add_argument("--split", default="test")
    e.add_argument("--linear-probe", action="store_true")
    e.add_argument("--k", type=int, default=20)
    e.add_argument("--few-shot", type=int, nargs="*", metavar="N",
                   help="few-shot k-NN + linear probe with N labeled images per class (e.g. 1 2 4 8 16)")
    e.add_argument("--few-shot-trials", type=int, default=5)
    e.add_argument("--peft", action="store_true",
                   help="also LoRA fine-tune the encoder (stock classification head) and report its accuracy")
    e.add_argument("--peft-steps", type=int, default=200)
    e.add_argument("--protocol", choices=["radiology"],
                   help="'radiology': the DINOv2-radiology study's protocol = k-NN + linear probe + few-shot "
                        "(1, 2, 4, 8, 16 per class) + LoRA fine-tune")
    e.add_argument("--output-dir", default=None, help="where --peft writes its adapter (default: a temp dir)")
    e.add_argument("--object-discovery", action="store_true",
                   help="also FG-ARI / mIoU of the model's instance masks against the dataset's ground-truth masks "
                        "(object-centric models, e.g. smtc on builtin:moving_digit_pairs)")

    f = sub.add_parser("finetune", help="LoRA fine-tune an exported encoder with a stock classification head")
    f.add_argument("encoder")
    f.add_argument("--dataset", default="builtin:digits")
    f.add_argument("--output-dir", default="hf-ssl-runs/lora")
    f.add_argument("--max-steps", type=int, default=200)
    f.add_argument("--learning-rate", type=float, default=1e-3)
    f.add_argument("--batch-size", type=int, default=64)
    f.add_argument("--lora-r", type=int, default=8)
    f.add_argument("--lora-alpha", type=int, default=16)
    f.add_argument("--push-to-hub", metavar="REPO_ID")

    x = sub.add_parser("export", help="write the encoder as a vanilla transformers checkpoint")
    x.add_argument("model")
    x.add_argument("output_dir")
    x.add_argument("--attribute", help="encoder attribute to export (e.g. teacher_encoder)")

    u = sub.add_parser("push", help="push a saved folder (checkpoint, encoder or adapter) to the Hub")
    u.add_argument("folder")
    u.add_argument("repo_id")
    u.add_argument("--private", action="store_true")

    sub.add_parser("list", help="list available methods")

    t = sub.add_parser("tokencut", help="TokenCut object discovery (Normalized Cut on ViT patch features)")
    t.add_argument("--model", required=True, help="an hf_ssl checkpoint with a ViT encoder or a stock ViTModel folder")
    t.add_argument("--image", required=True)
    t.add_argument("--output", required=True, help="picture with the discovered mask and box")
    t.add_argument("--tau", type=float, default=0.2)
    t.add_argument("--eps", type=float, default=1e-5)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    command = args.command or "pretrain"
    if args.command is None:
        args = parser.parse_args(["pretrain"])

    if command == "tokencut":
        from ..modeling.tokencut import run_tokencut

        result = run_tokencut(args.model, args.image, args.output, tau=args.tau, eps=args.eps)
        print(json.dumps({"box": list(result["box"]), "grid": list(result["grid"]), "output": args.output}))
        return 0
    if command == "list":
        from ..modeling.registry import available_methods, get_method

        for name in available_methods():
            spec = get_method(name)
            c = spec.config_class
            print(f"{name:12s} {spec.family:26s} {c.paper_title} <{c.paper_url}>"
                  + (f"  presets: {', '.join(sorted(spec.presets))}" if spec.presets else ""))
        return 0
    if command == "pretrain":
        run_pretraining(method=args.method, dataset=args.dataset,
                        preset=None if args.preset in (None, "none") else args.preset,
                        config_overrides=_parse_overrides(args.set), output_dir=args.output_dir,
                        max_steps=args.max_steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                        weight_decay=args.weight_decay, num_workers=args.num_workers, eval_steps=args.eval_steps,
                        device_augmentation=args.device_augmentation, extra_args=_speed_arguments(args),
                        save_steps=args.save_steps, resume=args.resume, seed=args.seed, push_to_hub=args.push_to_hub)
        return 0
    if command == "evaluate":
        from .data import labeled_eval_dataset
        from .evaluation import evaluate_representations

        from .evaluation import extract_features, few_shot_metrics, knn_and_linear_metrics

        if args.protocol == "radiology":
            args.linear_probe, args.peft = True, True
            args.few_shot = args.few_shot or [1, 2, 4, 8, 16]
        model = _load_ssl_model(args.model)
        train = extract_features(model, labeled_eval_dataset(args.dataset, "train", model.config), desc="train")
        test = extract_features(model, labeled_eval_dataset(args.dataset, args.split, model.config), desc="test")
        metrics = knn_and_linear_metrics(train, test, k=args.k, linear_probe=args.linear_probe)
        if args.object_discovery:
            from .object_discovery import evaluate_object_discovery

            metrics.update(evaluate_object_discovery(model, args.dataset, args.split))
        if args.few_shot:
            metrics.update(few_shot_metrics(train, test, shots=args.few_shot, trials=args.few_shot_trials, k=args.k))
        if args.peft:
            import tempfile

            from .downstream import finetune_with_lora

            with tempfile.TemporaryDirectory() as tmp:
                encoder_dir = args.model
                if not isinstance(model, _StockEncoder):
                    encoder_dir = model.export_encoder(os.path.join(tmp, "encoder"))
                peft_metrics = finetune_with_lora(encoder_dir, args.dataset, args.output_dir or os.path.join(tmp, "lora"),
                                                  max_steps=args.peft_steps, eval_split=args.split, disable_tqdm=True)
            metrics.update({f"peft_{k}": v for k, v in peft_metrics.items()})
        print(json.dumps(metrics, indent=2))
        return 0
    if command == "finetune":
        from .downstream import finetune_with_lora

        metrics = finetune_with_lora(args.encoder, args.dataset, args.output_dir, max_steps=args.max_steps,
                                     learning_rate=args.learning_rate, batch_size=args.batch_size, r=args.lora_r,
                                     alpha=args.lora_alpha, push_to_hub=args.push_to_hub)
        print(json.dumps(metrics, indent=2))
        return 0
    if command == "export":
        model = _load_ssl_model(args.model)
        if isinstance(model, _StockEncoder):
            raise SystemExit(f"{args.model} is already a stock transformers encoder")
        print(model.export_encoder(args.output_dir, attribute=args.attribute))
        return 0
    if command == "push":
        print(push_folder(args.folder, args.repo_id, private=args.private or None))
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
