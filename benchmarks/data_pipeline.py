"""Input pipeline throughput: streaming decode + a method's view generation + collation, images/s, with 0/1/2
DataLoader workers (the same `SSLViewDataset` / `SSLDataCollator` path `hf-ssl pretrain` uses).

    python benchmarks/data_pipeline.py                                  # swav + cae, digits, 0/1/2 workers
    python benchmarks/data_pipeline.py --methods swav --dataset /data/images --image-size 224 --workers 0 4 8
    python benchmarks/data_pipeline.py --methods swav --device-photometric both   # CPU cost with / without deferral

No model runs: this is the ceiling the data path puts on training speed. With `--dataset builtin:digits` the
images are tiny, so the numbers mostly measure augmentation and per-sample Python overhead.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import hf_ssl  # noqa: F401
from hf_ssl.modeling.registry import get_method
from hf_ssl.training.data import SSLDataCollator, SSLViewDataset, build_view_generator, load_image_stream


def measure(method: str, dataset: str, image_size: int, workers: int, batch_size: int, batches: int,
            device_photometric: bool = False) -> float:
    spec = get_method(method)
    config = spec.make_config("cpu-demo" if "cpu-demo" in spec.presets else None, image_size=image_size)
    views = build_view_generator(config, device_photometric=device_photometric)
    data = SSLViewDataset(load_image_stream(dataset, split="train", seed=0), views, seed=0,
                          image_mode={1: "L", 3: "RGB"}.get(config.num_channels))
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, num_workers=workers,
                                         collate_fn=SSLDataCollator(), persistent_workers=False)
    it = iter(loader)
    next(it)  # worker start-up and first decode are not timed
    start, images = time.perf_counter(), 0
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:  # a finite stream: start the next epoch
            it = iter(loader)
            batch = next(it)
        views = batch.get("pixel_values")
        first = views[0] if isinstance(views, (list, tuple)) else views
        images += int(first.shape[0])
    return images / (time.perf_counter() - start)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="*", default=["swav", "cae"])
    p.add_argument("--dataset", default="builtin:digits")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--workers", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--device-photometric", choices=["no", "yes", "both"], default="no",
                   help="leave colour jitter / grayscale / blur / solarize to the training device (the CPU side "
                        "then only crops and flips); 'both' measures each, alternating")
    p.add_argument("--json")
    args = p.parse_args(argv)
    modes = {"no": [False], "yes": [True], "both": [False, True]}[args.device_photometric]
    rows = []
    for method in args.methods:
        for w in args.workers:
            for deferred in modes:
                rate = measure(method, args.dataset, args.image_size, w, args.batch_size, args.batches, deferred)
                rows.append({"method": method, "workers": w, "images_per_s": round(rate, 1),
                             "image_size": args.image_size, "dataset": args.dataset,
                             "device_photometric": deferred})
                print(f"{method:10s} workers={w} device_photometric={int(deferred)} {rate:9.1f} images/s", flush=True)
    if args.json:
        json.dump(rows, open(args.json, "w"), indent=2)
    return rows


if __name__ == "__main__":
    main()
