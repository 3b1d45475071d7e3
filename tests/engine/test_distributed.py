"""torchrun-style DDP on CPU (gloo): 2 processes at batch B/2 train like 1 process at batch B (also
when stopped by a signal mid-epoch and resumed), and sharded evaluation scores every image exactly
once (9 test images: not divisible by 2)."""

import json
import os
import signal
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from conftest import tiny_overrides
from fgir.config import ConfigError, load_config
from fgir.engine import trainer
from fgir.engine.checkpoint import load_checkpoint
from fgir.engine.distributed import Distributed, gather_by_index
from fgir.engine.losses import classification_loss
from fgir.engine.trainer import TrainingInterrupted, per_process_batch, train

# 3 classes: 18 train images (global batch 4: 4 steps per epoch), 9 validation and 9 test images.
DDP_RUN = ("data.synthetic.val_per_class=3", "train.epochs=2", "train.device=cpu", "train.precision=fp32",
           "data.augment=medium", "train.label_smoothing=0.1")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, overrides: list[str], sigterm_rank1_at: int | None) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    if sigterm_rank1_at is None:
        train(load_config(None, overrides), progress=False)
        return
    # Only rank 1 is signalled (at its n-th loss): both must stop after the same step and save.
    calls = []

    def loss(*args, **kwargs):
        calls.append(None)
        if rank == 1 and len(calls) == sigterm_rank1_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return classification_loss(*args, **kwargs)

    trainer.classification_loss = loss
    with pytest.raises(TrainingInterrupted):
        train(load_config(None, overrides), progress=False)


def spawn(overrides: list[str], sigterm_rank1_at: int | None = None) -> None:
    mp.start_processes(_worker, args=(2, free_port(), overrides, sigterm_rank1_at), nprocs=2, join=True,
                       start_method="spawn")


def rows(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.slow
def test_two_gloo_processes_train_like_one_even_across_a_resume_and_score_every_test_image_once(tmp_path):
    torch.set_num_threads(1)
    single = train(load_config(None, tiny_overrides(tmp_path, *DDP_RUN, "train.run_name=single")), progress=False)
    # The 2-process run is interrupted mid-epoch (SIGTERM to rank 1 during epoch 2, batch 2) and resumed.
    spawn(tiny_overrides(tmp_path, *DDP_RUN, "train.run_name=ddp"), sigterm_rank1_at=6)
    ddp_dir = single.run_dir.parent / "ddp"
    last = load_checkpoint(ddp_dir / "checkpoints" / "last.safetensors", with_train_state=True)
    assert (last.epoch, last.global_step, last.train_state["epoch_state"]["batches"]) == (1, 6, 2)
    assert len(last.train_state["rng"]) == 2  # each process's random state
    spawn(tiny_overrides(tmp_path, *DDP_RUN, f"train.resume={ddp_dir}"))

    one, two = rows(single.run_dir), rows(ddp_dir)
    assert [r["step"] for r in two] == [r["step"] for r in one] == [4, 8]
    assert np.allclose([r["train_loss"] for r in two], [r["train_loss"] for r in one], rtol=0, atol=1e-5)
    assert [r["val_top1"] for r in two] == [r["val_top1"] for r in one]
    a = load_checkpoint(single.run_dir / "checkpoints" / "last.safetensors").model_state
    b = load_checkpoint(ddp_dir / "checkpoints" / "last.safetensors").model_state
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-5) for k in a)
    test_one = json.loads((single.run_dir / "test_metrics.json").read_text())["test"]
    test_two = json.loads((ddp_dir / "test_metrics.json").read_text())["test"]
    assert test_one["num_samples"] == test_two["num_samples"] == 9
    assert test_two["top1"] == test_one["top1"] and test_two["mean_class_acc"] == test_one["mean_class_acc"]
    # Only rank 0 wrote: one set of outputs, no temporary files left.
    assert sorted(p.name for p in ddp_dir.iterdir()) == sorted(p.name for p in single.run_dir.iterdir())


def test_the_global_batch_must_divide_among_the_processes():
    assert per_process_batch(8, Distributed(rank=1, world_size=2)) == 4
    with pytest.raises(ConfigError, match=r"data.batch_size=6 is the global batch .* processes \(4\)"):
        per_process_batch(6, Distributed(rank=0, world_size=4))


def test_gathering_by_index_keeps_each_sample_once_in_dataset_order():
    # One process: the rows of padded / repeated indices collapse to one each, in index order.
    rows_ = torch.tensor([[3.0], [1.0], [3.5], [0.0]])
    gathered, present = gather_by_index(rows_, np.array([3, 1, 3, 0]), 4, Distributed())
    assert present.tolist() == [0, 1, 3] and gathered.flatten().tolist() == [0.0, 1.0, 3.0]
    with pytest.raises(ValueError, match=r"outside \[0, 4\)"):
        gather_by_index(rows_, np.array([3, 1, 4, 0]), 4, Distributed())
