"""Representation quality after a fixed small pretraining budget, per method, on the default real dataset.

For every registered method (or `--methods ...`) this pretrains the method's `cpu-demo` preset on the built-in
digits (real 8x8 scans upsampled by the method's image processor) for `--steps` optimizer steps (default: the
preset's own budget, `MethodSpec.demo_training`, else 400) with the same
optimizer recipe as `hf-ssl pretrain` (AdamW, cosine schedule, batch 64), then reports weighted k-NN and
linear-probe accuracy of the pooled encoder features on the held-out split, next to the same numbers for the
random-init encoder (same seed, same architecture). `--with-lightly` adds lightly's implementation of the same
method where lightly has one (SwAV; MoCo v2 = MoCHi without mixing; SimCLR = G-SimCLR without guidance, each also
run on the hf_ssl side with those overrides), trained for the same budget on the same views and evaluated by the
same code.

    python benchmarks/quality.py                              # all methods, each at its cpu-demo budget
    python benchmarks/quality.py --methods swav cae --steps 600
    venv-lightly/bin/python benchmarks/quality.py --methods swav mochi gsimclr --with-lightly

Results go to `benchmarks/results/quality.json` and a markdown table `benchmarks/results/quality.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

import hf_ssl  # noqa: F401
from hf_ssl.modeling.registry import available_methods, get_method

HERE = os.path.dirname(os.path.abspath(__file__))


def run_method(name: str, steps: int, seed: int, batch_size: int, workdir: str, overrides=None, label=None):
    from hf_ssl.training.cli import run_pretraining

    if steps is None:  # the method's own cpu-demo budget (MethodSpec.demo_training), else 400 like `hf-ssl pretrain`
        steps = int(get_method(name).demo_training.get("max_steps", 400))
    res = run_pretraining(name, output_dir=os.path.join(workdir, name), max_steps=steps, batch_size=batch_size,
                          seed=seed, config_overrides=overrides,
                          extra_args={"linear_probe": True, "save_strategy": "no", "disable_tqdm": True},
                          log=lambda *a, **k: None, save=False)
    return {
        "method": label or name,
        "steps": steps,
        "knn_random_init": res["knn_before"]["knn_accuracy"],
        "knn": res["knn_after"]["knn_accuracy"],
        "linear_probe_random_init": res["knn_before"].get("linear_probe_accuracy"),
        "linear_probe": res["knn_after"].get("linear_probe_accuracy"),
        "train_seconds": round(res["train_seconds"], 1),
    }


# hf_ssl method (+ config overrides that reduce it to the base method lightly implements) per lightly pair
LIGHTLY_PAIRS = {
    "swav": ("swav", {}),
    "moco": ("mochi", {"mixing_start_step": 10**9}),  # MoCHi's MoCo v2 base: hard-negative mixing never starts
    "simclr": ("gsimclr", {"pseudo_label_interval": 10**9}),  # G-SimCLR's SimCLR base: no pseudo-label guidance
}


def _lightly_swav(model, config):
    import torch.nn.functional as F
    from lightly.loss import SwaVLoss
    from lightly.models.modules import SwaVProjectionHead, SwaVPrototypes

    from hf_ssl.modeling.backbones import encode, feature_dim

    encoder = model.encoder
    head = SwaVProjectionHead(feature_dim(config.backbone_config), config.projection_hidden_dim, config.projection_dim)
    prototypes = SwaVPrototypes(config.projection_dim, n_prototypes=config.num_prototypes,
                                n_steps_frozen_prototypes=config.freeze_prototypes_steps)
    criterion = SwaVLoss(temperature=config.swav_temperature, sinkhorn_iterations=config.sinkhorn_iterations,
                         sinkhorn_epsilon=config.sinkhorn_epsilon)
    n_global = config.augmentation.get("num_global", 2)

    def step(batch, i):
        prototypes.normalize()
        outs = [prototypes(F.normalize(head(encode(encoder, v)), dim=1), step=i) for v in batch["pixel_values"]]
        return criterion(outs[:n_global], outs[n_global:])

    return list(encoder.parameters()) + list(head.parameters()) + list(prototypes.parameters()), step


def _lightly_moco(model, config):
    import copy

    from lightly.loss import NTXentLoss
    from lightly.models.modules import MoCoProjectionHead
    from lightly.models.utils import batch_shuffle, batch_unshuffle, deactivate_requires_grad, update_momentum

    from hf_ssl.modeling.backbones import encode, feature_dim

    encoder = model.encoder
    head = MoCoProjectionHead(feature_dim(config.backbone_config), config.projection_hidden_dim, config.projection_dim)
    key_encoder, key_head = copy.deepcopy(encoder), copy.deepcopy(head)
    deactivate_requires_grad(key_encoder)
    deactivate_requires_grad(key_head)
    criterion = NTXentLoss(temperature=config.contrastive_temperature,
                           memory_bank_size=(config.queue_size, config.projection_dim))

    def step(batch, i):
        x_q, x_k = batch["pixel_values"][:2]
        update_momentum(encoder, key_encoder, m=config.teacher_momentum)
        update_momentum(head, key_head, m=config.teacher_momentum)
        q = head(encode(encoder, x_q))
        with torch.no_grad():
            shuffled, order = batch_shuffle(x_k)
            k = batch_unshuffle(key_head(encode(key_encoder, shuffled)), order)
        return criterion(q, k)

    return list(encoder.parameters()) + list(head.parameters()), step


def _lightly_simclr(model, config):
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead

    from hf_ssl.modeling.backbones import encode, feature_dim

    encoder = model.encoder
    dims = [feature_dim(config.backbone_config)] + list(config.projection_hidden_dims)
    head = SimCLRProjectionHead(dims[0], dims[1], config.projection_dim, num_layers=len(dims))
    criterion = NTXentLoss(temperature=config.contrastive_temperature)

    def step(batch, i):
        x0, x1 = batch["pixel_values"][:2]
        return criterion(head(encode(encoder, x0)), head(encode(encoder, x1)))

    return list(encoder.parameters()) + list(head.parameters()), step


LIGHTLY_BUILDERS = {"swav": _lightly_swav, "moco": _lightly_moco, "simclr": _lightly_simclr}


def run_lightly(pair: str, steps, seed: int, batch_size: int):
    """lightly's implementation of `pair` (its heads, losses, momentum and memory-bank utilities, used as its
    examples use them) on the hf_ssl method's encoder (same init), views, optimizer recipe and budget; evaluated by
    the same k-NN / linear-probe code."""
    from transformers import get_cosine_schedule_with_warmup, set_seed

    from hf_ssl.training.data import (SSLDataCollator, SSLViewDataset, build_view_generator, labeled_eval_dataset,
                                      load_image_stream)
    from hf_ssl.training.evaluation import evaluate_representations

    name, overrides = LIGHTLY_PAIRS[pair]
    spec = get_method(name)
    demo = spec.demo_training
    steps = steps or int(demo.get("max_steps", 400))
    config = spec.make_config("cpu-demo", **overrides)
    set_seed(seed)
    model = spec.model_class(config)  # only its encoder is trained and evaluated: the same init as the hf_ssl run
    params, step_fn = LIGHTLY_BUILDERS[pair](model, config)
    knn_train = labeled_eval_dataset("builtin:digits", "train", config)
    knn_test = labeled_eval_dataset("builtin:digits", "test", config)
    before = evaluate_representations(model, knn_train, knn_test, linear_probe=True)
    opt = torch.optim.AdamW(params, lr=float(demo.get("learning_rate", 1e-3)), weight_decay=1e-6)
    sched = get_cosine_schedule_with_warmup(opt, max(1, int(0.05 * steps)), steps)
    data = SSLViewDataset(load_image_stream("builtin:digits", split="train", seed=seed), build_view_generator(config),
                          seed=seed, image_mode="RGB")
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, collate_fn=SSLDataCollator())
    model.train()
    start, step, epoch = time.time(), 0, 0
    while step < steps:
        # each pass over the data is a new epoch, as the Trainer runs it: reshuffled, with fresh augmentation draws
        # (without this every pass would repeat the first pass's views, and the comparison would not be like for like)
        data.set_epoch(epoch)
        epoch += 1
        for batch in loader:
            loss = step_fn(batch, step)
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if step >= steps:
                break
    elapsed = time.time() - start
    model.eval()
    after = evaluate_representations(model, knn_train, knn_test, linear_probe=True)
    import lightly

    return {"method": f"{pair} (lightly {lightly.__version__})", "steps": steps,
            "knn_random_init": before["knn_accuracy"], "knn": after["knn_accuracy"],
            "linear_probe_random_init": before.get("linear_probe_accuracy"),
            "linear_probe": after.get("linear_probe_accuracy"), "train_seconds": round(elapsed, 1)}


def _fmt(x):
    return "-" if x is None else f"{x:.3f}"


def to_markdown(rows):
    lines = ["| method | steps | k-NN random init | k-NN trained | linear probe random init | linear probe trained "
             "| train s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['steps']} | {_fmt(r['knn_random_init'])} | {_fmt(r['knn'])} | "
                     f"{_fmt(r['linear_probe_random_init'])} | {_fmt(r['linear_probe'])} | {r['train_seconds']} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="*", default=None, help="default: every registered method")
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps per method (default: each method's cpu-demo budget, else 400)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--with-lightly", action="store_true")
    p.add_argument("--out", default=os.path.join(HERE, "results", "quality.json"))
    args = p.parse_args(argv)
    methods = args.methods or available_methods()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    existing = {}
    if os.path.exists(args.out):  # runs for a subset update their rows only
        existing = {r["method"]: r for r in json.load(open(args.out))}
    print(f"torch {torch.__version__} | threads {torch.get_num_threads()} | steps {args.steps}")
    with tempfile.TemporaryDirectory() as workdir:
        for name in methods:
            try:
                row = run_method(name, args.steps, args.seed, args.batch_size, workdir)
            except Exception as exc:  # one failing method must not hide the others' numbers
                print(f"{name}: FAILED {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
            existing[name] = row
            print(f"{name:10s} k-NN {_fmt(row['knn_random_init'])} -> {_fmt(row['knn'])} | linear "
                  f"{_fmt(row['linear_probe_random_init'])} -> {_fmt(row['linear_probe'])} | {row['train_seconds']}s",
                  flush=True)
        if args.with_lightly:  # each lightly pair next to hf_ssl's same base method at the same budget
            for pair, (name, overrides) in LIGHTLY_PAIRS.items():
                if name not in methods:
                    continue
                rows_now = [run_lightly(pair, args.steps, args.seed, args.batch_size)]
                if overrides:  # hf_ssl reduced to the same base method (e.g. MoCHi without mixing = MoCo v2)
                    rows_now.append(run_method(name, args.steps, args.seed, args.batch_size, workdir, overrides,
                                               label=f"{pair} (hf_ssl {name} base)"))
                for row in rows_now:
                    existing[row["method"]] = row
                    print(f"{row['method']} k-NN {_fmt(row['knn_random_init'])} -> {_fmt(row['knn'])} | linear "
                          f"{_fmt(row['linear_probe_random_init'])} -> {_fmt(row['linear_probe'])}", flush=True)
    rows = sorted(existing.values(), key=lambda r: r["method"])
    json.dump(rows, open(args.out, "w"), indent=2)
    with open(args.out.replace(".json", ".md"), "w") as f:
        f.write(to_markdown(rows) + "\n")
    print(to_markdown(rows))
    return rows


if __name__ == "__main__":
    main()
