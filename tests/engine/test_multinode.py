"""Two torchrun launchers as two nodes (`--nnodes 2`, one process each, rendezvous on 127.0.0.1,
gloo): the documented multi-node command trains to the same weights and scores as one process."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from conftest import tiny_overrides
from fgir.config import load_config
from fgir.engine.checkpoint import load_checkpoint
from fgir.engine.trainer import train

# 18 train images at global batch 4 (4 steps per epoch), 9 validation and 9 test images.
RUN = ("data.synthetic.val_per_class=3", "train.epochs=2", "train.device=cpu", "train.precision=fp32",
       "data.augment=medium", "train.label_smoothing=0.1")
LAUNCH_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_node(node_rank: int, port: int, overrides: list[str], log) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--node-rank", str(node_rank), "--master-addr", "127.0.0.1", "--master-port", str(port),
               "-m", "fgir.cli", "train", *overrides, "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_two_torchrun_nodes_train_like_one_process(tmp_path):
    torch.set_num_threads(1)
    single = train(load_config(None, tiny_overrides(tmp_path, *RUN, "train.run_name=single")), progress=False)

    overrides = tiny_overrides(tmp_path, *RUN, "train.run_name=two-nodes")
    port = free_port()
    logs = [open(tmp_path / f"node{rank}.log", "w") for rank in (0, 1)]
    nodes = [launch_node(rank, port, overrides, logs[rank]) for rank in (0, 1)]
    try:
        codes = [node.wait(timeout=LAUNCH_TIMEOUT_S) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
        for log in logs:
            log.close()
    output = "\n".join((tmp_path / f"node{rank}.log").read_text() for rank in (0, 1))
    assert codes == [0, 0], output

    two = single.run_dir.parent / "two-nodes"
    rows = [json.loads((run / "metrics.json").read_text()) for run in (single.run_dir, two)]
    assert [r["step"] for r in rows[1]] == [r["step"] for r in rows[0]] == [4, 8]
    assert all(abs(a["train_loss"] - b["train_loss"]) < 1e-5 for a, b in zip(*rows, strict=True))
    a = load_checkpoint(single.run_dir / "checkpoints" / "last.safetensors").model_state
    b = load_checkpoint(two / "checkpoints" / "last.safetensors").model_state
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-5) for k in a)
    test_one, test_two = (json.loads((run / "test_metrics.json").read_text())["test"] for run in (single.run_dir, two))
    assert test_one["num_samples"] == test_two["num_samples"] == 9
    assert test_two["top1"] == test_one["top1"]
