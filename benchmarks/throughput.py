"""Training throughput of hf_ssl methods next to the bare backbone's forward+backward.

For each method: a fixed batch is produced once by the method's own view policy (so the model sees exactly
the views it trains on: multi-crop, masks, ...) from real images (built-in digits), then we time full
training steps (forward, backward, optimizer step, `on_step_end`) and, on the same process, the bare
encoder's forward+backward on the global-view batch. Runs alternate method/backbone to share machine noise.
Images/s counts source images (one image -> all its views).

    python benchmarks/throughput.py                     # all methods, CPU-sized defaults
    python benchmarks/throughput.py --methods swav --backbone resnet-50 --image-size 224 --batch-size 64
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import inspect
import json
import os
import resource
import statistics
import sys
import time

import numpy as np
import torch

import hf_ssl  # noqa: F401
from hf_ssl.modeling.backbones import BACKBONE_PRESETS, build_backbone, encode
from hf_ssl.modeling.registry import available_methods, get_method
from hf_ssl.training.data import SSLDataCollator, SSLViewDataset, build_view_generator, load_image_stream

VIT_ONLY_DEFAULT = "vit-micro"
CONV_DEFAULT = "resnet-tiny"


def make_batch(config, batch_size: int, seed: int = 0, dataset: str = None):
    """One collated batch from the method's own view policy on its default data (`MethodSpec.default_dataset`:
    digits for image methods, clips / volumes / point sets / captioned images for the others)."""
    spec = get_method(config.model_type)
    mode = {1: "L", 3: "RGB"}.get(getattr(config, "num_channels", 3), "RGB")
    ds = SSLViewDataset(load_image_stream(dataset or spec.default_dataset, shuffle_buffer=0),
                        build_view_generator(config), seed=seed, image_mode=mode)
    examples = []
    for example in ds:
        if example.get("_empty"):
            continue
        examples.append(example)
        if len(examples) == batch_size:
            break
    batch = SSLDataCollator()(examples)
    batch.pop("num_skipped", None)
    return batch


def to_device(batch, device):
    out = {}
    for k, v in batch.items():
        out[k] = [t.to(device) for t in v] if isinstance(v, list) else v.to(device) if torch.is_tensor(v) else v
    return out


def global_views(batch, key="pixel_values"):
    views = batch[key]
    return views[0] if isinstance(views, list) else views


def time_fn(fn, steps, warmup, device):
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def method_config(name, backbone, image_size):
    """The method's cpu-demo config on `backbone` at `image_size` for image methods; methods on other inputs
    (clips, volumes, point sets) or tied to one encoder family keep their cpu-demo encoder and input size."""
    spec = get_method(name)
    preset = "cpu-demo" if "cpu-demo" in spec.presets else None
    if spec.default_dataset == "builtin:digits":
        try:
            return spec.make_config(preset, backbone_config=backbone, image_size=image_size)
        except ValueError:  # e.g. a ViT-only method given a ConvNet backbone
            try:
                return spec.make_config(preset, backbone_config=VIT_ONLY_DEFAULT, image_size=image_size)
            except ValueError:
                pass
    return spec.make_config(preset)


@contextlib.contextmanager
def _features_with_grad(model):
    """The feature paths (`get_image_features` / `get_input_features`) are @torch.no_grad for evaluation; the bare
    step needs them differentiable, including a decorated parent an override reaches through `super()` (the volume
    mixin under Alice). Unwraps them on every class of the model's MRO for the duration, then restores them."""
    patched = []
    for cls in type(model).__mro__:
        for attr in ("get_image_features", "get_input_features"):
            fn = cls.__dict__.get(attr)
            if fn is not None and inspect.unwrap(fn) is not fn:
                patched.append((cls, attr, fn))
                setattr(cls, attr, inspect.unwrap(fn))
    try:
        yield
    finally:
        for cls, attr, fn in reversed(patched):
            setattr(cls, attr, fn)


def _rss_mib() -> float:
    """Current resident set of this process (Linux /proc; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_method(name, backbone, image_size, batch_size, steps, warmup, rounds, device, dtype, channels_last=False,
                 compile=False):
    rss_at_start = _rss_mib()
    spec = get_method(name)
    config = method_config(name, backbone, image_size)
    if getattr(config, "stage_steps", None) is not None:  # a staged schedule is timed with every term on (joint)
        config.stage_steps = None
    torch.manual_seed(0)
    model = spec.model_class(config).to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                            fused=device.type == "cuda")
    batch = to_device(make_batch(config, batch_size), device)
    # the bare encoder step: the model's own feature path (`get_input_features`: the exported encoder + pooling) on
    # the first view of its main input, every parameter trainable
    bare = copy.deepcopy(model).train()
    for param in bare.parameters():
        param.requires_grad_(True)
    if channels_last:  # what SSLTrainingArguments(channels_last=True) does
        from hf_ssl.training.trainer import _to_channels_last

        model.to(memory_format=torch.channels_last)
        bare.to(memory_format=torch.channels_last)
        batch = {k: _to_channels_last(v) for k, v in batch.items()}
    x = global_views(batch, getattr(model, "main_input_name", "pixel_values"))
    step_counter = [0]
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else torch.autocast(device.type, enabled=False)
    forward = torch.compile(model) if compile else model

    def method_step():
        with autocast:
            loss = forward(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        step_counter[0] += 1
        model.on_step_end(step_counter[0], 10**6)

    with autocast, _features_with_grad(bare):
        probe = bare.get_input_features(x)
    bare_params = [p for p in bare.parameters()]
    eopt = torch.optim.AdamW(bare_params, lr=1e-4, fused=device.type == "cuda")

    def backbone_step():
        with autocast, _features_with_grad(bare):
            out = bare.get_input_features(x)
        out.float().pow(2).mean().backward()
        eopt.step()
        eopt.zero_grad(set_to_none=True)

    method_rates, backbone_rates = [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(rounds):
        method_rates.append(batch_size * steps / time_fn(method_step, steps, warmup, device))
        if probe.requires_grad:
            backbone_rates.append(batch_size * steps / time_fn(backbone_step, steps, warmup, device))
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    m = statistics.median(method_rates)
    b = statistics.median(backbone_rates) if backbone_rates else float("nan")
    inputs = batch[getattr(model, "main_input_name", "pixel_values")]
    return {"method": name, "backbone": getattr(config.backbone_config, "model_type", "?"),
            "input": getattr(model, "main_input_name", "pixel_values"), "input_shape": list(x.shape[1:]),
            "batch_size": batch_size, "method_images_per_s": round(m, 1), "backbone_fwd_bwd_images_per_s": round(b, 1),
            "ratio_method_over_backbone": round(m / b, 3), "peak_memory_mib": round(peak, 1),
            "views": len(inputs) if isinstance(inputs, list) else 1, "compiled": compile,
            "bf16": dtype is not None, "rss_at_start_mib": round(rss_at_start, 1),
            # the encoder's size, since cpu-demo encoders of one family differ (SMTC's ViT is ~1/7 of vit-micro)
            "encoder_params": sum(p.numel() for p in getattr(model, model.export_attribute).parameters())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="*", default=None)
    p.add_argument("--backbone", default=CONV_DEFAULT, help=f"preset: {sorted(BACKBONE_PRESETS)}")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast around forward + loss (GPU, or a CPU with "
                   "bfloat16 instructions), what SSLTrainingArguments(bf16=True) does")
    p.add_argument("--isolate", action="store_true", help="run each method in a fresh process, so that the CPU peak "
                   "memory (max resident set) is that method's own; `peak - rss_at_start` is its working set")
    p.add_argument("--channels-last", action="store_true", help="channels-last weights and inputs (ConvNets)")
    p.add_argument("--compile", action="store_true", help="torch.compile the method's module (what "
                   "SSLTrainingArguments(torch_compile=True) does); the first steps include compilation, so use a "
                   "larger --warmup")
    p.add_argument("--json", help="also write results to this file")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    dtype = torch.bfloat16 if args.bf16 else None
    rows, failures = [], []
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} backbone={args.backbone} "
          f"image={args.image_size} batch={args.batch_size} channels_last={args.channels_last} "
          f"compile={args.compile}")
    print(f"{'method':10s} {'backbone':9s} {'views':>5s} {'method img/s':>13s} {'backbone f+b img/s':>19s} "
          f"{'ratio':>6s} {'peak MiB':>9s}")
    for name in args.methods or available_methods():
        try:
            if args.isolate:
                row = _isolated(name, argv if argv is not None else sys.argv[1:])
            else:
                row = bench_method(name, args.backbone, args.image_size, args.batch_size, args.steps, args.warmup,
                               args.rounds, device, dtype, channels_last=args.channels_last,
                               compile=args.compile)
        except Exception as err:  # one broken method must not hide the others' numbers; it is reported and counted
            failures.append(name)
            print(f"{name:10s} FAILED: {type(err).__name__}: {err}")
            continue
        rows.append(row)
        print(f"{row['method']:10s} {row['backbone']:9s} {row['views']:5d} {row['method_images_per_s']:13.1f} "
              f"{row['backbone_fwd_bwd_images_per_s']:19.1f} {row['ratio_method_over_backbone']:6.3f} "
              f"{row['peak_memory_mib']:9.1f}")
        sys.stdout.flush()
    if device.type == "cpu":
        print("peak MiB on CPU = the method's process's max resident set" if args.isolate else
              "peak MiB on CPU = the process's max resident set so far (it only grows down the table; --isolate)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    if failures:
        raise SystemExit(f"{len(failures)} method(s) failed: {', '.join(failures)}")
    return rows


def _isolated(name, argv):
    """`bench_method` for one method in a child process with the same arguments; returns its row."""
    import subprocess
    import tempfile

    keep, i = [], 0
    while i < len(argv):  # drop --methods (and its values), --json and --isolate: the child gets its own
        arg = argv[i]
        i += 1
        if arg in ("--methods", "--json"):
            while i < len(argv) and not argv[i].startswith("--"):
                i += 1
        elif arg != "--isolate" and not arg.startswith(("--methods=", "--json=")):
            keep.append(arg)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "row.json")
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), *keep, "--methods", name, "--json", out],
                              capture_output=True, text=True)
        if proc.returncode != 0 or not os.path.exists(out):
            raise RuntimeError(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-500:])
        return json.load(open(out))[0]


if __name__ == "__main__":
    main()
