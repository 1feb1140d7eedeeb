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
from hf_ssl.training.data import SSLDataCollator, build_view_generator, decode_image, load_image_stream

VIT_ONLY_DEFAULT = "vit-micro"
CONV_DEFAULT = "resnet-tiny"


def make_batch(config, batch_size: int, seed: int = 0):
    policy = build_view_generator(config)
    rng = np.random.default_rng(seed)
    stream = load_image_stream("builtin:digits", shuffle_buffer=0)
    examples = []
    for example in stream:
        examples.append(dict(policy(decode_image(example["image"]), rng), num_skipped=0))
        if len(examples) == batch_size:
            break
    batch = SSLDataCollator()(examples)
    batch.pop("num_skipped")
    return batch


def to_device(batch, device):
    out = {}
    for k, v in batch.items():
        out[k] = [t.to(device) for t in v] if isinstance(v, list) else v.to(device) if torch.is_tensor(v) else v
    return out


def global_views(batch):
    views = batch["pixel_values"]
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


def bench_method(name, backbone, image_size, batch_size, steps, warmup, rounds, device, dtype, channels_last=False):
    spec = get_method(name)
    overrides = {"backbone_config": backbone, "image_size": image_size}
    try:
        config = spec.make_config("cpu-demo" if "cpu-demo" in spec.presets else None, **overrides)
    except ValueError:  # e.g. a ViT-only method given a ConvNet backbone
        config = spec.make_config("cpu-demo" if "cpu-demo" in spec.presets else None,
                                  backbone_config=VIT_ONLY_DEFAULT, image_size=image_size)
    torch.manual_seed(0)
    model = spec.model_class(config).to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                            fused=device.type == "cuda")
    batch = to_device(make_batch(config, batch_size), device)
    encoder = build_backbone(config.backbone_config).to(device).train()
    eopt = torch.optim.AdamW(encoder.parameters(), lr=1e-4, fused=device.type == "cuda")
    if channels_last:  # what SSLTrainingArguments(channels_last=True) does
        from hf_ssl.training.trainer import _to_channels_last

        model.to(memory_format=torch.channels_last)
        encoder.to(memory_format=torch.channels_last)
        batch = {k: _to_channels_last(v) for k, v in batch.items()}
    x = global_views(batch)
    enc_channels = getattr(config.backbone_config, "num_channels", x.shape[1])
    if x.dim() == 4 and x.shape[1] > enc_channels:  # channel-adaptive methods (ChAda-ViT) wrap a 1-channel encoder
        x = x[:, :enc_channels]
    step_counter = [0]
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else torch.autocast(device.type, enabled=False)

    def method_step():
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        step_counter[0] += 1
        model.on_step_end(step_counter[0], 10**6)

    def backbone_step():
        with autocast:
            out = encode(encoder, x, config.feature_pooling)
        out.float().pow(2).mean().backward()
        eopt.step()
        eopt.zero_grad(set_to_none=True)

    method_rates, backbone_rates = [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(rounds):
        method_rates.append(batch_size * steps / time_fn(method_step, steps, warmup, device))
        backbone_rates.append(batch_size * steps / time_fn(backbone_step, steps, warmup, device))
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    m, b = statistics.median(method_rates), statistics.median(backbone_rates)
    return {"method": name, "backbone": config.backbone_config.model_type, "image_size": image_size,
            "batch_size": batch_size, "method_images_per_s": round(m, 1), "backbone_fwd_bwd_images_per_s": round(b, 1),
            "ratio_method_over_backbone": round(m / b, 3), "peak_memory_mib": round(peak, 1),
            "views": len(batch["pixel_values"]) if isinstance(batch["pixel_values"], list) else 1}


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
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    p.add_argument("--channels-last", action="store_true", help="channels-last weights and inputs (ConvNets)")
    p.add_argument("--json", help="also write results to this file")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    dtype = torch.bfloat16 if args.bf16 else None
    rows, failures = [], []
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} backbone={args.backbone} "
          f"image={args.image_size} batch={args.batch_size} channels_last={args.channels_last}")
    print(f"{'method':10s} {'backbone':9s} {'views':>5s} {'method img/s':>13s} {'backbone f+b img/s':>19s} "
          f"{'ratio':>6s} {'peak MiB':>9s}")
    for name in args.methods or available_methods():
        try:
            row = bench_method(name, args.backbone, args.image_size, args.batch_size, args.steps, args.warmup,
                               args.rounds, device, dtype, channels_last=args.channels_last)
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
        print("peak MiB on CPU = the process's max resident set so far (it only grows down the table)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    if failures:
        raise SystemExit(f"{len(failures)} method(s) failed: {', '.join(failures)}")
    return rows


if __name__ == "__main__":
    main()
