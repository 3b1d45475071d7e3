"""Cross-entropy on hard labels or on soft (mixed) targets, with label smoothing in both cases and
optional per-class weights for long-tailed training sets."""

from __future__ import annotations

import torch
import torch.nn.functional as F

CLASS_WEIGHTINGS = ("none", "inverse_sqrt", "effective_number")


def class_weights(counts: torch.Tensor, scheme: str, beta: float = 0.999) -> torch.Tensor | None:
    """Per-class loss weights from training images per class, scaled to average 1 over classes.

    inverse_sqrt: 1 / sqrt(n). effective_number (Cui et al. 2019): (1 - beta) / (1 - beta^n), the
    inverse of the "effective" number of samples. A class without training images gets the largest
    weight of the others (it cannot be trained on anyway; this keeps the scale finite)."""
    if scheme == "none":
        return None
    if scheme not in CLASS_WEIGHTINGS:
        raise ValueError(f"unknown class weighting '{scheme}' (known: {', '.join(CLASS_WEIGHTINGS)})")
    n = counts.double()
    present = n > 0
    if not present.any():
        raise ValueError("class weights need at least one class with training images")
    if scheme == "inverse_sqrt":
        raw = n.clamp(min=1).rsqrt()
    else:
        raw = (1 - beta) / (1 - torch.pow(torch.tensor(beta, dtype=torch.float64), n.clamp(min=1)))
    raw = torch.where(present, raw, raw[present].max())
    return (raw * len(raw) / raw.sum()).float()


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0,
                        weight: torch.Tensor | None = None) -> torch.Tensor:
    """`targets` are class indices (B,) or probabilities (B, C) from mixup/cutmix. Mixed targets
    are used as they are (the reference code mixed images but scored hard labels: a bug we fix).
    With per-class `weight`, each sample counts with the weight of its (expected) class and the
    batch loss is the weighted mean, as F.cross_entropy does for hard labels."""
    if targets.ndim == 1:
        return F.cross_entropy(logits, targets, weight=weight, label_smoothing=label_smoothing)
    num_classes = logits.shape[1]
    smoothed = targets * (1 - label_smoothing) + label_smoothing / num_classes
    per_sample = torch.sum(-smoothed * F.log_softmax(logits.float(), dim=1), dim=1)
    if weight is None:
        return per_sample.mean()
    sample_weight = targets @ weight
    return (per_sample * sample_weight).sum() / sample_weight.sum()
