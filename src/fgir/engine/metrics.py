"""Classification metrics computed from logits and integer labels."""

from __future__ import annotations

from dataclasses import dataclass

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


# Rows of float64 softmax at a time: 4096 x 3,263 classes (DAF:re) is about 100 MB, where the whole
# test split at once would take 2.4 GB.
CHUNK_ROWS = 4096


def negative_log_likelihood(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean cross-entropy of softmax(logits / temperature), in float64."""
    total = 0.0
    for start in range(0, len(labels), CHUNK_ROWS):
        scaled = logits[start:start + CHUNK_ROWS].double() / temperature
        total += torch.nn.functional.cross_entropy(scaled, labels[start:start + CHUNK_ROWS].long(),
                                                   reduction="sum").item()
    return total / len(labels)


def top_confidence(logits: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(probability of the predicted class, predicted class) under softmax(logits / temperature)."""
    confidence, prediction = [], []
    for start in range(0, len(logits), CHUNK_ROWS):
        top = (logits[start:start + CHUNK_ROWS].double() / temperature).softmax(dim=1).max(dim=1)
        confidence.append(top.values)
        prediction.append(top.indices)
    return torch.cat(confidence), torch.cat(prediction)


@dataclass(frozen=True)
class ReliabilityBins:
    """Samples grouped by confidence (probability of the predicted class) into equal-width bins;
    bin b holds confidences in (b/n, (b+1)/n], the first bin also holds 0 (Guo et al. 2017)."""

    counts: torch.Tensor  # (n_bins,) samples per bin
    confidence: torch.Tensor  # (n_bins,) mean confidence per bin, NaN where empty
    accuracy: torch.Tensor  # (n_bins,) fraction correct per bin, NaN where empty

    @property
    def ece(self) -> float:
        """Expected calibration error: sum over bins of |bin| / N * |accuracy - confidence|."""
        filled = self.counts > 0
        weights = self.counts[filled].double() / self.counts.sum()
        return (weights * (self.accuracy[filled] - self.confidence[filled]).abs()).sum().item()


def reliability_bins(confidence: torch.Tensor, correct: torch.Tensor, n_bins: int = 15) -> ReliabilityBins:
    """Bin predictions by their confidence (see ReliabilityBins); `correct` says which were right."""
    confidence = confidence.double()
    index = (torch.ceil(confidence * n_bins).long() - 1).clamp(0, n_bins - 1)
    counts = torch.bincount(index, minlength=n_bins)
    per_bin = counts.double().clamp(min=1)
    empty = torch.full((n_bins,), float("nan"), dtype=torch.float64)
    mean_confidence = torch.where(counts > 0, torch.bincount(index, confidence, minlength=n_bins) / per_bin, empty)
    accuracy = torch.where(counts > 0, torch.bincount(index, correct.double(), minlength=n_bins) / per_bin, empty)
    return ReliabilityBins(counts, mean_confidence, accuracy)


def logit_reliability(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15,
                      temperature: float = 1.0) -> ReliabilityBins:
    """Reliability bins of softmax(logits / temperature) against the labels."""
    confidence, prediction = top_confidence(logits, temperature)
    return reliability_bins(confidence, prediction == labels, n_bins)


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15,
                               temperature: float = 1.0) -> float:
    """ECE (a fraction, not %) of softmax(logits / temperature) with `n_bins` equal-width bins."""
    return logit_reliability(logits, labels, n_bins, temperature).ece


def answered_at(confidence: torch.Tensor, correct: torch.Tensor, threshold: float) -> dict[str, float | None]:
    """What an "unknown below `threshold`" rule does: % of samples answered (confidence >= threshold)
    and % of those answered correctly (None when nothing is answered)."""
    answered = confidence >= threshold
    count = int(answered.sum())
    return {
        "threshold": threshold,
        "answered": 100 * count / len(confidence),
        "accuracy_answered": 100 * correct[answered].double().mean().item() if count else None,
    }
