"""Batched inference over a data loader; metrics live in fgir.engine.metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from fgir.data.datasets import Batch
from fgir.engine.device import autocast
from fgir.engine.distributed import Distributed, gather_by_index, gather_objects


@dataclass
class Predictions:
    logits: torch.Tensor  # (N, C) float32, in dataset order
    labels: torch.Tensor  # (N,)
    # Which samples were scored: positions in the loader's order, or dataset indices after
    # `predict_split` (all of them unless unreadable images were skipped).
    positions: torch.Tensor | None = None
    skipped: list[str] = field(default_factory=list)  # messages of the images that could not be read


@torch.inference_mode()
def predict_loader(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    dtype: torch.dtype | None = None,
    desc: str = "eval",
    progress: bool = True,
    allow_empty: bool = False,
) -> Predictions:
    """Logits of every sample the loader yields. A loader over a skipping dataset (`Batch`es) may
    leave unreadable images out: `skipped` lists them and `positions` says which samples were scored."""
    model.eval()
    all_logits, all_labels, all_positions, skipped = [], [], [], []
    position = 0
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
        if isinstance(batch, Batch):
            images, labels, kept = batch.images, batch.labels, batch.kept
            skipped += [s.message for s in batch.skipped]
        else:
            images, labels = batch
            kept = torch.ones(len(images), dtype=torch.bool)
        all_positions.append(position + torch.nonzero(kept).flatten())
        position += len(kept)
        if not len(images):
            continue
        with autocast(device, dtype):
            logits = model(images.to(device, non_blocking=True))
        all_logits.append(logits.float().cpu())
        all_labels.append(labels)
    if not all_logits and not allow_empty:
        raise ValueError(f"{desc}: the split is empty" if not skipped else f"{desc}: no image could be read")
    logits = torch.cat(all_logits) if all_logits else torch.empty(0)
    labels = torch.cat(all_labels) if all_labels else torch.empty(0, dtype=torch.long)
    return Predictions(logits, labels, torch.cat(all_positions) if all_positions else None, skipped)


def predict_split(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    dtype: torch.dtype | None,
    ddp: Distributed,
    desc: str = "eval",
    progress: bool = True,
) -> Predictions:
    """Predictions for the whole split in dataset order on every rank, when each rank's loader holds
    a shard (an `EpochSampler` with its rank): every sample counted exactly once."""
    local = predict_loader(model, loader, device, dtype, desc, progress, allow_empty=ddp.enabled)
    if not ddp.enabled:
        return local
    # A rank's loader position -> dataset index: the sampler's order (no shuffle in evaluation).
    order = np.array([index for index, _ in loader.sampler], dtype=np.int64)
    indices = order[local.positions.numpy()] if local.positions is not None else np.empty(0, np.int64)
    width = local.logits.shape[1] if local.logits.ndim == 2 else 0
    # A rank with nothing to score has no class count; the others tell it.
    width = max(int(w) for w in gather_objects(width, ddp))  # type: ignore[call-overload]
    logits = local.logits.reshape(-1, width)
    rows = torch.cat([logits, local.labels.reshape(-1, 1).float()], dim=1)
    dataset_size = len(loader.dataset)  # type: ignore[arg-type]
    gathered, present = gather_by_index(rows, indices, dataset_size, ddp)
    if not len(present):
        raise ValueError(f"{desc}: the split is empty" if dataset_size == 0 else f"{desc}: no image could be read")
    skipped = sorted({m for messages in gather_objects(local.skipped, ddp) for m in messages})  # type: ignore[attr-defined]
    return Predictions(gathered[:, :width], gathered[:, width].long(), torch.from_numpy(present), skipped)
