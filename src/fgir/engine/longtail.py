"""Long-tail evaluation: accuracy of head, medium and tail classes, grouped by how many training
images each class has, and per-class accuracy against that count."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fgir.engine.metrics import per_class_accuracy

GROUPS = ("head", "medium", "tail")


def class_frequencies(labels: list[int] | torch.Tensor, num_classes: int) -> torch.Tensor:
    """Images per class (0 for classes without any) of a split's labels."""
    return torch.bincount(torch.as_tensor(labels, dtype=torch.long), minlength=num_classes)[:num_classes]


def frequency_groups(train_counts: torch.Tensor, head_above: int = 100, tail_below: int = 20) -> torch.Tensor:
    """Group index (0 head, 1 medium, 2 tail) of each class by its training-image count.

    Boundaries: head has MORE than `head_above` images, tail FEWER than `tail_below`, medium the
    rest, both ends included (defaults: head > 100, medium 20..100, tail < 20, as in DAF:re, arXiv:2101.08674, and
    OLTR's many/medium/few-shot split). A class without training images is tail.
    """
    if not 1 <= tail_below <= head_above + 1:
        raise ValueError(f"need 1 <= tail_below <= head_above + 1, got tail_below={tail_below}, "
                         f"head_above={head_above}")
    groups = torch.ones_like(train_counts, dtype=torch.long)
    groups[train_counts > head_above] = 0
    groups[train_counts < tail_below] = 2
    return groups


def long_tail_metrics(confusion: torch.Tensor, train_counts: torch.Tensor, head_above: int = 100,
                      tail_below: int = 20) -> dict[str, dict[str, int | float | None]]:
    """For each of head / medium / tail (see frequency_groups), from a (true, predicted) confusion
    matrix of the evaluated split:

    - classes: classes in the group; classes_evaluated: those with samples in the split,
    - samples: evaluated samples of the group's classes,
    - top1: % of those samples predicted correctly (sample-weighted),
    - mean_class_acc: mean over the evaluated classes of their accuracy in % (each class counts
      once: the usual "many/medium/few-shot accuracy").
    Accuracies of a group without samples are None (undefined, not 0).
    """
    if len(train_counts) != len(confusion):
        raise ValueError(f"{len(train_counts)} training counts for a confusion matrix of {len(confusion)} classes")
    groups = frequency_groups(train_counts, head_above, tail_below)
    support = confusion.sum(dim=1)
    correct = confusion.diagonal()
    accuracy = per_class_accuracy(confusion)
    out: dict[str, dict[str, int | float | None]] = {}
    for index, name in enumerate(GROUPS):
        members = groups == index
        evaluated = members & (support > 0)
        samples = int(support[members].sum())
        out[name] = {
            "classes": int(members.sum()),
            "classes_evaluated": int(evaluated.sum()),
            "samples": samples,
            "top1": 100 * correct[members].sum().item() / samples if samples else None,
            "mean_class_acc": 100 * accuracy[evaluated].mean().item() if samples else None,
        }
    return out


@dataclass(frozen=True)
class FrequencyBin:
    low: int  # training-image counts in [low, high)
    high: int
    classes: int
    mean_count: float  # geometric mean of the classes' counts: the bin's place on a log axis
    mean_accuracy: float  # mean per-class accuracy of the bin's classes, a fraction


def binned_accuracy(train_counts: torch.Tensor, accuracy: torch.Tensor) -> list[FrequencyBin]:
    """Mean per-class accuracy in bins of training count doubling in width ([1, 2), [2, 4), ...),
    over classes that have training images and an accuracy (NaN: absent from the split); empty
    bins are left out."""
    counts = train_counts.double()
    used = (counts > 0) & ~accuracy.isnan()
    bins = []
    power = torch.floor(torch.log2(counts[used])).long()
    for exponent in sorted(set(power.tolist())):
        members = power == exponent
        bins.append(FrequencyBin(
            low=2 ** exponent,
            high=2 ** (exponent + 1),
            classes=int(members.sum()),
            mean_count=torch.log(counts[used][members]).mean().exp().item(),
            mean_accuracy=accuracy[used][members].double().mean().item(),
        ))
    return bins
