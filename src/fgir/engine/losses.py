"""Cross-entropy on hard labels or on soft (mixed) targets, with label smoothing in both cases."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """`targets` are class indices (B,) or probabilities (B, C) from mixup/cutmix. Mixed targets
    are used as they are (the reference code mixed images but scored hard labels: a bug we fix)."""
    if targets.ndim == 1:
        return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    num_classes = logits.shape[1]
    smoothed = targets * (1 - label_smoothing) + label_smoothing / num_classes
    return torch.sum(-smoothed * F.log_softmax(logits.float(), dim=1), dim=1).mean()
