"""`torchrun --nproc_per_node 2` (gloo, CPU) runs the same training: each process reads its own part of the
stream, gradients are synchronised (identical weights on both ranks), and rank 0 writes the checkpoint."""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("method", ["swav"])
def test_torchrun_two_process_training(method, tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    cmd = [torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           os.path.join(os.path.dirname(__file__), "scripts", "ddp_train.py"), method, str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = json.load(open(tmp_path / "rank0.json"))
    r1 = json.load(open(tmp_path / "rank1.json"))
    assert r0["world_size"] == r1["world_size"] == 2
    assert len(r0["batch_sums"]) == len(r1["batch_sums"]) == 3
    assert all(a != b for a, b in zip(r0["batch_sums"], r1["batch_sums"]))  # different shards per rank
    assert r0["param_sum"] == pytest.approx(r1["param_sum"], rel=1e-6)  # DDP kept weights in sync
    assert r0["param_abs"] == pytest.approx(r1["param_abs"], rel=1e-6)
    assert (tmp_path / "checkpoint-3" / "model.safetensors").exists()
