"""hf_ssl vs lightly, same process, same backbone, same batch, alternating timed rounds.

Run it in a venv that has both packages (lightly needs torchvision, so not the CPU-only project venv):

    python -m venv venv-lightly && venv-lightly/bin/pip install torch==2.14.1 torchvision==0.29.1 lightly
    venv-lightly/bin/pip install -e . && venv-lightly/bin/python benchmarks/peers.py

Both sides use the identical stock transformers encoder module (built from the same config and seed), the
same multi-view batch produced by hf_ssl's view policy from real images, AdamW, and the same head sizes. What is
timed is a full training step: forward, loss, backward, optimizer step and the per-step hook (prototype
normalisation for SwAV). lightly is used the way its documentation examples use it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import hf_ssl  # noqa: F401
from hf_ssl.modeling.backbones import encode, feature_dim
from hf_ssl.modeling.registry import get_method

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from throughput import make_batch  # noqa: E402


def _timed(step, steps, warmup):
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - start


def swav_pair(config, batch, lr):
    """(hf_ssl step, lightly step) for SwAV with identical encoder weights."""
    from lightly.loss import SwaVLoss
    from lightly.models.modules import SwaVProjectionHead, SwaVPrototypes

    torch.manual_seed(0)
    ours = get_method("swav").model_class(config).train()
    opt = torch.optim.AdamW(ours.parameters(), lr=lr)
    counter = [0]

    def ours_step():
        loss = ours(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        counter[0] += 1
        ours.on_step_end(counter[0], 10**6)

    torch.manual_seed(0)
    peer_encoder = get_method("swav").model_class(config).encoder.train()
    head = SwaVProjectionHead(feature_dim(config.backbone_config), config.projection_hidden_dim, config.projection_dim)
    prototypes = SwaVPrototypes(config.projection_dim, n_prototypes=config.num_prototypes)
    criterion = SwaVLoss(temperature=config.swav_temperature, sinkhorn_iterations=config.sinkhorn_iterations,
                         sinkhorn_epsilon=config.sinkhorn_epsilon)
    params = list(peer_encoder.parameters()) + list(head.parameters()) + list(prototypes.parameters())
    popt = torch.optim.AdamW(params, lr=lr)
    views = batch["pixel_values"]
    n_global = config.augmentation["num_global"]

    def peer_step():
        prototypes.normalize()
        outs = [prototypes(F.normalize(head(encode(peer_encoder, v)), dim=1)) for v in views]
        loss = criterion(outs[:n_global], outs[n_global:])
        loss.backward()
        popt.step()
        popt.zero_grad(set_to_none=True)

    return ours_step, peer_step


PAIRS = {"swav": swav_pair}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="*", default=sorted(PAIRS))
    p.add_argument("--backbone", default="resnet-18")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import lightly

    print(f"torch {torch.__version__} | lightly {lightly.__version__} | threads {torch.get_num_threads()} | "
          f"backbone {args.backbone} | image {args.image_size} | batch {args.batch_size}")
    rows = []
    for name in args.methods:
        spec = get_method(name)
        local = max(8, int(round(args.image_size * 96 / 224 / 8)) * 8)
        config = spec.make_config(None, backbone_config=args.backbone, image_size=args.image_size,
                                  augmentation={"local_size": local}, num_prototypes=300,
                                  projection_hidden_dim=512, projection_dim=128)
        batch = make_batch(config, args.batch_size)
        ours_step, peer_step = PAIRS[name](config, batch, lr=1e-4)
        ours_rates, peer_rates = [], []
        for _ in range(args.rounds):
            ours_rates.append(args.batch_size * args.steps / _timed(ours_step, args.steps, args.warmup))
            peer_rates.append(args.batch_size * args.steps / _timed(peer_step, args.steps, args.warmup))
        o, q = statistics.median(ours_rates), statistics.median(peer_rates)
        row = {"method": name, "hf_ssl_images_per_s": round(o, 2), "lightly_images_per_s": round(q, 2),
               "speedup": round(o / q, 3), "views": len(batch["pixel_values"])}
        rows.append(row)
        print(f"{name:8s} hf_ssl {o:8.2f} img/s | lightly {q:8.2f} img/s | hf_ssl/lightly {o / q:5.2f}x")
    if args.json:
        json.dump(rows, open(args.json, "w"), indent=2)
    return rows


if __name__ == "__main__":
    main()
