"""torch.distributed for torchrun: one process per device, NCCL on GPUs and gloo on CPUs.

`torchrun` sets RANK, WORLD_SIZE and LOCAL_RANK (plus MASTER_ADDR/PORT); without them the run is a
single process and every helper here is a no-op, so the trainer reads the same either way.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this call created the process group, so it also destroys it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 is the only one that writes files and prints progress."""
        return self.rank == 0


def init_distributed(device: torch.device) -> Distributed:
    """Join the process group torchrun described in the environment; a single process without it.
    On CUDA each process takes the GPU of its LOCAL_RANK (`device` must then be plain `cuda`)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=30))
    return Distributed(rank, world_size, local_rank, owns_group)


def process_device(device: torch.device, ddp: Distributed) -> torch.device:
    """The device of this process: under torchrun on GPUs, the GPU of its local rank."""
    if ddp.enabled and device.type == "cuda":
        return torch.device("cuda", ddp.local_rank)
    return device


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(ddp: Distributed) -> None:
    if ddp.enabled:
        dist.barrier()


def _comm_device() -> torch.device:
    """NCCL moves CUDA tensors only; gloo CPU ones."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def sum_across_ranks(values: list[float], ddp: Distributed) -> list[float]:
    """Element-wise sum of `values` over all ranks (float64, so sums of per-rank sums stay exact)."""
    if not ddp.enabled:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def gather_objects(value: object, ddp: Distributed) -> list[object]:
    """[value of rank 0, value of rank 1, ...] on every rank."""
    if not ddp.enabled:
        return [value]
    out: list[object] = [None] * ddp.world_size
    dist.all_gather_object(out, value)
    return out


def gather_by_index(rows: torch.Tensor, indices: np.ndarray, num_samples: int, ddp: Distributed) -> tuple[torch.Tensor, np.ndarray]:
    """Collect per-rank `rows` (one per dataset index in `indices`) into dataset order on every rank.

    Sharded evaluation pads the last shard by repeating samples and may drop unreadable ones, so
    ranks hold different counts and some indices twice: each index is kept once (its first copy).
    Returns (rows of the indices present, in increasing order; those indices)."""
    shards = gather_objects((rows.cpu(), np.asarray(indices, dtype=np.int64)), ddp)
    all_rows = torch.cat([shard[0] for shard in shards])  # type: ignore[index]
    all_indices = np.concatenate([shard[1] for shard in shards])  # type: ignore[index]
    present, first = np.unique(all_indices, return_index=True)
    if len(present) and (present[0] < 0 or present[-1] >= num_samples):
        raise ValueError(f"gathered dataset indices outside [0, {num_samples})")
    return all_rows[torch.from_numpy(first)], present


def wrap_model(model: nn.Module, device: torch.device, ddp: Distributed) -> nn.Module:
    """DistributedDataParallel around `model`; the model itself when single-process. On GPUs its
    BatchNorm layers become SyncBatchNorm, so their statistics cover the global batch (PyTorch's
    SyncBatchNorm has no CPU implementation: on CPU each process keeps its own statistics)."""
    if not ddp.enabled:
        return model
    if device.type == "cuda" and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper (its SyncBatchNorm conversion may have
    replaced modules of the one passed to wrap_model); `model` itself when not wrapped."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
