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

import pytest
import torch
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


# ------------------------------------------------------------------------------------------------------------------
# The DDP equivalence pattern: every process runs forward/backward on its rows of one batch (with the gradients
# averaged over processes, as DDP does), saves what it got, and the parent compares with one process on the whole
# batch. Workers are module-level functions `fn(rank, world_size, out_dir, *args)` that end with `save_rank`.
# ------------------------------------------------------------------------------------------------------------------
def rank_rows(batch_size: int, rank: int, world_size: int) -> slice:
    """The rows of process `rank` when `batch_size` rows are split evenly in rank order."""
    if batch_size % world_size:
        raise ValueError(f"a batch of {batch_size} rows does not split evenly over {world_size} processes")
    per = batch_size // world_size
    return slice(rank * per, (rank + 1) * per)


def shard(batch, rows):
    """`rows` of every tensor in `batch` (a tensor or a dict / list / tuple of them, nested); other values kept."""
    if isinstance(batch, torch.Tensor):
        return batch[rows]
    if isinstance(batch, dict):
        return {k: shard(v, rows) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(shard(v, rows) for v in batch)
    return batch


def _batch_size(batch):
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for v in values:
        n = _batch_size(v)
        if n is not None:
            return n
    return None


def parameter_grads(model) -> dict:
    """{name: copy of .grad} of the parameters that received a gradient."""
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def average_over_processes_(grads: dict, world_size: int) -> dict:
    """All-reduce and divide by the world size in place (DDP's gradient averaging); returns `grads`."""
    import torch.distributed as dist

    for g in grads.values():
        dist.all_reduce(g)
        g /= world_size
    return grads


def forward_backward(model, batch):
    """`model(**batch)` and backward of its loss; returns the output."""
    out = model(**batch)
    out.loss.backward()
    return out


def shard_forward_backward(model, batch, rank: int, world_size: int, average_grads: bool = True):
    """In a worker: forward/backward on this process's rows of `batch` (every tensor split along dim 0).

    Returns `(output, grads)`: the gradients averaged over processes as DDP does, or with `average_grads=False`
    this process's own (the parent then averages them with `mean_over_ranks(ranks, "grads")`).
    """
    out = forward_backward(model, shard(batch, rank_rows(_batch_size(batch), rank, world_size)))
    grads = parameter_grads(model)
    return out, (average_over_processes_(grads, world_size) if average_grads else grads)


def save_rank(out_dir, rank: int, **record) -> None:
    """Save what process `rank` measured (tensors, floats, dicts / lists of them) for the parent to load."""
    torch.save(record, os.path.join(str(out_dir), f"rank{rank}.pt"))


def run_ranks(fn, tmp_path, *args, world_size: int = 2, timeout: float = DEFAULT_TIMEOUT) -> list:
    """`run_distributed(fn, tmp_path, str(tmp_path), *args)` and load every process's `save_rank` record."""
    run_distributed(fn, tmp_path, str(tmp_path), *args, world_size=world_size, timeout=timeout)
    return [torch.load(os.path.join(str(tmp_path), f"rank{r}.pt")) for r in range(world_size)]


def _rank_mean(values):
    if isinstance(values[0], dict):
        return {k: _rank_mean([v[k] for v in values]) for k in values[0]}
    return sum(values[1:], values[0]) / len(values)


def mean_over_ranks(ranks: list, key: str):
    """The mean over processes of `ranks[r][key]` (floats, tensors or dicts of them, averaged per entry)."""
    return _rank_mean([r[key] for r in ranks])


def _scalar(value) -> float:
    return value.item() if isinstance(value, torch.Tensor) else float(value)


def assert_grads_close(got: dict, expected, *, atol: float, rtol: float, same_keys: bool = False) -> None:
    """Every gradient of `expected` (a model after backward, or {name: grad}) matches `got[name]` within
    atol + rtol * |expected|; at least one parameter must have a gradient. `same_keys`: no gradient extra or missing."""
    if isinstance(expected, torch.nn.Module):
        expected = {n: p.grad for n, p in expected.named_parameters() if p.grad is not None}
    assert expected, "no parameter received a gradient in the single-process run"
    if same_keys:
        assert set(got) == set(expected), sorted(set(got) ^ set(expected))
    for name, g in expected.items():
        torch.testing.assert_close(got[name], g, atol=atol, rtol=rtol, msg=lambda m, name=name: f"{name}: {m}")


def assert_ddp_matches_single(ranks: list, loss, grads, *, atol: float, rtol: float, loss_rel: float = 1e-5,
                              grads_averaged: bool = True, same_keys: bool = False) -> None:
    """The two checks every DDP equivalence test makes: the mean of the per-process losses (what DDP's gradient
    averaging optimises) equals the single-process `loss`, and so do the gradients (`grads`: the single-process
    model after backward, or {name: grad}). `grads_averaged`: the workers saved gradients already averaged over
    processes (else they are averaged here)."""
    assert _scalar(mean_over_ranks(ranks, "loss")) == pytest.approx(_scalar(loss), rel=loss_rel)
    got = ranks[0]["grads"] if grads_averaged else mean_over_ranks(ranks, "grads")
    assert_grads_close(got, grads, atol=atol, rtol=rtol, same_keys=same_keys)
