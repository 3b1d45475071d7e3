"""Batched inference over a data loader; metrics live in fgir.engine.metrics."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from fgir.engine.device import autocast


@dataclass
class Predictions:
    logits: torch.Tensor  # (N, C) float32, in dataset order
    labels: torch.Tensor  # (N,)


@torch.inference_mode()
def predict_loader(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    dtype: torch.dtype | None = None,
    desc: str = "eval",
    progress: bool = True,
) -> Predictions:
    model.eval()
    all_logits, all_labels = [], []
    for images, labels in tqdm(loader, desc=desc, leave=False, disable=not progress):
        with autocast(device, dtype):
            logits = model(images.to(device, non_blocking=True))
        all_logits.append(logits.float().cpu())
        all_labels.append(labels)
    if not all_logits:
        raise ValueError(f"{desc}: the split is empty")
    return Predictions(torch.cat(all_logits), torch.cat(all_labels))
