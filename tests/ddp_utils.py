"""Run a function in N CPU processes with a gloo process group (for DDP equivalence tests)."""

import os

import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank, world_size, init_file, fn, args):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def run_distributed(fn, tmp_path, *args, world_size: int = 2):
    """`fn(rank, world_size, *args)` must be a module-level function; it writes results to files under tmp_path."""
    init_file = os.path.join(str(tmp_path), "dist_init")
    mp.spawn(_worker, args=(world_size, init_file, fn, args), nprocs=world_size, join=True)
