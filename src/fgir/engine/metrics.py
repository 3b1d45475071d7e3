"""Classification metrics computed from logits and integer labels."""

from __future__ import annotations

import torch


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Fraction of samples whose label is among the k highest logits (k capped at the class count)."""
    if len(labels) == 0:
        return float("nan")
    k = min(k, logits.shape[1])
    hits = (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
    return hits.double().mean().item()


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(true class, predicted class) counts."""
    flat = labels.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(confusion: torch.Tensor) -> torch.Tensor:
    """Accuracy of each class that has test samples; NaN for classes absent from the split."""
    support = confusion.sum(dim=1).double()
    correct = confusion.diagonal().double()
    return torch.where(support > 0, correct / support.clamp(min=1), torch.full_like(support, float("nan")))


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """top-1, top-5, and mean / std of per-class accuracy over the classes present (in %)."""
    num_classes = logits.shape[1]
    confusion = confusion_matrix(logits.argmax(dim=1), labels, num_classes)
    per_class = per_class_accuracy(confusion)
    present = per_class[~per_class.isnan()]
    return {
        "top1": 100 * topk_accuracy(logits, labels, 1),
        "top5": 100 * topk_accuracy(logits, labels, 5),
        "mean_class_acc": 100 * present.mean().item() if len(present) else float("nan"),
        "std_class_acc": 100 * present.std(unbiased=False).item() if len(present) else float("nan"),
        "num_samples": int(len(labels)),
    }
