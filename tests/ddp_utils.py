"""Run a function in N CPU processes with a gloo process group (for DDP equivalence tests).

Starting two Python processes, importing torch/transformers/hf_ssl in each and forming a process group costs several
seconds, and dozens of tests need it. So the processes are started once per test session and reused: a small pool of
`world_size` workers that keep their gloo group and run one function after another. A failure (or a hang past the
timeout) on any rank tears the pool down, so the next test starts from fresh processes, and is re-raised here with
the worker's traceback. `HF_SSL_TEST_FRESH_DDP=1` falls back to fresh processes for every call.
"""

import atexit
import os
import queue
import tempfile
import traceback

import torch.multiprocessing as mp

DEFAULT_TIMEOUT = float(os.environ.get("HF_SSL_TEST_DDP_TIMEOUT", 600))


def _serve(rank, world_size, init_file, tasks, results):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        while True:
            task = tasks.get()
            if task is None:
                break
            fn, args = task
            try:
                fn(rank, world_size, *args)
                results.put((rank, None))
            except BaseException:  # noqa: BLE001 - reported to the parent
                results.put((rank, traceback.format_exc()))
    finally:
        dist.destroy_process_group()


class _Pool:
    def __init__(self, world_size):
        ctx = mp.get_context("spawn")
        self.world_size = world_size
        self.dir = tempfile.mkdtemp(prefix="hf_ssl_ddp_")
        init_file = os.path.join(self.dir, "dist_init")
        self.tasks = [ctx.Queue() for _ in range(world_size)]
        self.results = ctx.Queue()
        self.procs = [ctx.Process(target=_serve, args=(r, world_size, init_file, self.tasks[r], self.results),
                                  daemon=True) for r in range(world_size)]
        for p in self.procs:
            p.start()

    def run(self, fn, args, timeout):
        for q in self.tasks:
            q.put((fn, args))
        errors = {}
        for _ in range(self.world_size):
            try:
                rank, err = self.results.get(timeout=timeout)
            except queue.Empty:
                dead = [r for r, p in enumerate(self.procs) if not p.is_alive()]
                raise RuntimeError(f"distributed test function {fn.__name__} did not finish in {timeout:.0f} s"
                                   + (f" (ranks {dead} died)" if dead else ""))
            if err is not None:
                errors[rank] = err
        if errors:
            raise AssertionError("\n".join(f"rank {r} failed:\n{e}" for r, e in sorted(errors.items())))

    def close(self, kill=False):
        for p, q in zip(self.procs, self.tasks):
            if kill:
                p.kill()
            elif p.is_alive():
                q.put(None)
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()


_POOLS = {}


def _close_all():
    for pool in _POOLS.values():
        pool.close()
    _POOLS.clear()


atexit.register(_close_all)


def _worker(rank, world_size, init_file, fn, args):
    import torch.distributed as dist

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def run_distributed(fn, tmp_path, *args, world_size: int = 2, timeout: float = DEFAULT_TIMEOUT):
    """`fn(rank, world_size, *args)` must be a module-level function; it writes results to files under tmp_path."""
    if os.environ.get("HF_SSL_TEST_FRESH_DDP") == "1":
        init_file = os.path.join(str(tmp_path), "dist_init")
        mp.spawn(_worker, args=(world_size, init_file, fn, args), nprocs=world_size, join=True)
        return
    pool = _POOLS.get(world_size)
    if pool is None or not all(p.is_alive() for p in pool.procs):
        if pool is not None:
            pool.close(kill=True)
        pool = _POOLS[world_size] = _Pool(world_size)
    try:
        pool.run(fn, args, timeout)
    except BaseException:
        # a failed or hung collective leaves the group in an unknown state: start over for the next test
        _POOLS.pop(world_size, None)
        pool.close(kill=True)
        raise
