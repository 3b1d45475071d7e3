"""The mean of the best epochs' weights (`train.average_top=N`), as timm's avg_checkpoints.py makes it.

While training, the N epochs with the best validation top-1 keep their weights (the ones the run
serves: raw or EMA, see `train.ema_select`) in `checkpoints/top/epoch-NNNN.safetensors`, each file
written atomically and the worst one removed when an N+1-th enters (ties: the earlier epoch stays).
Only the tensors a checkpoint stores are kept, so adapter-only methods keep small files. At the end
their mean is written as `checkpoints/averaged.safetensors`: every floating-point tensor is summed in
float64, divided by the count, clamped to the float32 range and cast back to its dtype, as timm's
script does; integer buffers (BatchNorm's num_batches_tracked) are taken from the best epoch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from fgir.engine.checkpoint import load_checkpoint, read_metadata

TOP_DIR = "top"
AVERAGED = "averaged.safetensors"


@dataclass(frozen=True)
class KeptEpoch:
    path: Path
    epoch: int
    top1: float


def top_path(ckpt_dir: Path, epoch: int) -> Path:
    return ckpt_dir / TOP_DIR / f"epoch-{epoch:04d}.safetensors"


def kept_epochs(ckpt_dir: Path) -> list[KeptEpoch]:
    """The kept epochs, best first (higher validation top-1, then the earlier epoch)."""
    kept = []
    for path in sorted((ckpt_dir / TOP_DIR).glob("epoch-*.safetensors")):
        metadata = read_metadata(path)
        kept.append(KeptEpoch(path, int(metadata["epoch"]), float(json.loads(metadata["metrics"])["val"]["top1"])))
    return ranked(kept)


def ranked(kept: list[KeptEpoch]) -> list[KeptEpoch]:
    return sorted(kept, key=lambda k: (-k.top1, k.epoch))


def enters_top(ckpt_dir: Path, n: int, top1: float) -> bool:
    """Would an epoch with validation `top1` be among the `n` best kept so far (ties: the earlier stays)?"""
    kept = kept_epochs(ckpt_dir)
    return len(kept) < n or top1 > kept[n - 1].top1


def prune(ckpt_dir: Path, n: int) -> list[KeptEpoch]:
    """Remove all but the `n` best kept epochs; returns those left, best first."""
    kept = kept_epochs(ckpt_dir)
    for extra in kept[n:]:
        extra.path.unlink()
    return kept[:n]


def forget_after(ckpt_dir: Path, epoch: int) -> None:
    """A resumed run trains the epochs after `epoch` again: what they kept before the stop goes."""
    for kept in kept_epochs(ckpt_dir):
        if kept.epoch > epoch:
            kept.path.unlink()


def average_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """timm's avg_checkpoints mean of `states` (best first: its integer tensors are the ones kept)."""
    limits = torch.finfo(torch.float32)
    averaged = {}
    for key, best in states[0].items():
        if not best.is_floating_point():
            averaged[key] = best.clone()
            continue
        total = sum(state[key].to(torch.float64) for state in states)
        averaged[key] = (total / len(states)).clamp(limits.min, limits.max).to(best.dtype)
    return averaged


def average_kept(ckpt_dir: Path) -> tuple[dict[str, torch.Tensor], list[KeptEpoch]]:
    """The mean of the kept epochs' weights and which epochs they are, best first."""
    kept = kept_epochs(ckpt_dir)
    return average_states([load_checkpoint(k.path).model_state for k in kept]), kept
