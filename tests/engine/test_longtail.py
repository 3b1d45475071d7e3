import math

import pytest
import torch

from fgir.engine.longtail import binned_accuracy, class_frequencies, frequency_groups, long_tail_metrics
from fgir.engine.metrics import confusion_matrix, per_class_accuracy

# Five classes: two head (> 100 training images), one medium (20..100) without test samples, two tail.
TRAIN_COUNTS = torch.tensor([150, 120, 50, 10, 3])
# (label, prediction) of each test sample: class 0 3/4 right, class 1 0/2, class 3 1/1, class 4 1/3.
PAIRS = [(0, 0), (0, 0), (0, 0), (0, 4), (1, 0), (1, 3), (3, 3), (4, 4), (4, 0), (4, 1)]


def confusion_of(pairs, num_classes=5):
    labels, predictions = torch.tensor(pairs).T
    return confusion_matrix(predictions, labels, num_classes)


def test_class_frequencies_count_every_class_including_absent_ones():
    assert class_frequencies([0, 0, 2, 0], 4).tolist() == [3, 0, 1, 0]
    assert class_frequencies(torch.tensor([], dtype=torch.long), 2).tolist() == [0, 0]


def test_group_boundaries_head_above_exclusive_tail_below_exclusive():
    counts = torch.tensor([0, 19, 20, 100, 101, 5000])
    assert frequency_groups(counts).tolist() == [2, 2, 1, 1, 0, 0]
    assert frequency_groups(counts, head_above=19, tail_below=20).tolist() == [2, 2, 0, 0, 0, 0]  # no medium
    assert frequency_groups(counts, head_above=5000, tail_below=1).tolist() == [2, 1, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="tail_below=30, head_above=20"):
        frequency_groups(counts, head_above=20, tail_below=30)
    with pytest.raises(ValueError, match="tail_below=0"):
        frequency_groups(counts, tail_below=0)


def test_head_medium_tail_against_hand_computed_values():
    metrics = long_tail_metrics(confusion_of(PAIRS), TRAIN_COUNTS)
    assert metrics["head"] == {"classes": 2, "classes_evaluated": 2, "samples": 6,
                               "top1": pytest.approx(100 * 3 / 6), "mean_class_acc": pytest.approx((75 + 0) / 2)}
    # The medium class has no test sample: its accuracies are undefined, not 0.
    assert metrics["medium"] == {"classes": 1, "classes_evaluated": 0, "samples": 0, "top1": None,
                                 "mean_class_acc": None}
    assert metrics["tail"] == {"classes": 2, "classes_evaluated": 2, "samples": 4,
                               "top1": pytest.approx(100 * 2 / 4), "mean_class_acc": pytest.approx((100 + 100 / 3) / 2)}


def test_groups_without_classes_and_custom_thresholds():
    # Everything is tail when nothing reaches 1000 images: head and medium are empty groups.
    metrics = long_tail_metrics(confusion_of(PAIRS), TRAIN_COUNTS, head_above=1000, tail_below=1000)
    assert metrics["head"] == metrics["medium"] == {"classes": 0, "classes_evaluated": 0, "samples": 0,
                                                    "top1": None, "mean_class_acc": None}
    assert metrics["tail"]["classes"] == 5 and metrics["tail"]["samples"] == len(PAIRS)
    assert metrics["tail"]["top1"] == pytest.approx(100 * 5 / 10)
    assert metrics["tail"]["mean_class_acc"] == pytest.approx((75 + 0 + 100 + 100 / 3) / 4)

    # head > 100, medium 10..100 (classes 2 and 3), tail < 10 (class 4).
    metrics = long_tail_metrics(confusion_of(PAIRS), TRAIN_COUNTS, head_above=100, tail_below=10)
    assert (metrics["medium"]["classes"], metrics["medium"]["samples"], metrics["medium"]["top1"]) == (2, 1, 100.0)
    assert metrics["tail"]["mean_class_acc"] == pytest.approx(100 / 3)


def test_group_totals_add_up_to_the_whole_split():
    torch.manual_seed(0)
    labels = torch.randint(0, 40, (500,))
    predictions = torch.where(torch.rand(500) < 0.6, labels, torch.randint(0, 40, (500,)))
    train_counts = torch.randint(0, 300, (40,))
    metrics = long_tail_metrics(confusion_matrix(predictions, labels, 40), train_counts)
    groups = [metrics[name] for name in ("head", "medium", "tail")]
    assert sum(g["classes"] for g in groups) == 40 and sum(g["samples"] for g in groups) == 500
    correct = sum(g["top1"] * g["samples"] / 100 for g in groups if g["samples"])
    assert correct == pytest.approx((predictions == labels).sum().item())
    # Per group, the class mean equals a loop over the group's classes.
    for name, members in (("head", train_counts > 100), ("tail", train_counts < 20)):
        accuracies = [((predictions == c) & (labels == c)).sum().item() / (labels == c).sum().item()
                      for c in range(40) if members[c] and (labels == c).any()]
        assert metrics[name]["mean_class_acc"] == pytest.approx(100 * sum(accuracies) / len(accuracies))


def test_mismatched_class_counts_are_an_error():
    with pytest.raises(ValueError, match="4 training counts for a confusion matrix of 5 classes"):
        long_tail_metrics(confusion_of(PAIRS), TRAIN_COUNTS[:4])


def test_binned_accuracy_doubling_bins_skip_absent_and_untrained_classes():
    counts = torch.tensor([1, 3, 2, 5, 0, 8, 9, 15])
    accuracy = torch.tensor([1.0, 0.5, math.nan, 0.25, 1.0, 0.0, 1.0, 0.5], dtype=torch.float64)
    bins = binned_accuracy(counts, accuracy)
    assert [(b.low, b.high, b.classes) for b in bins] == [(1, 2, 1), (2, 4, 1), (4, 8, 1), (8, 16, 3)]
    assert [b.mean_accuracy for b in bins] == pytest.approx([1.0, 0.5, 0.25, 0.5])
    assert [b.mean_count for b in bins] == pytest.approx([1, 3, 5, (8 * 9 * 15) ** (1 / 3)])


def test_binned_accuracy_from_a_confusion_matrix():
    accuracy = per_class_accuracy(confusion_of(PAIRS))  # class 2 absent from the test split: NaN
    bins = binned_accuracy(TRAIN_COUNTS, accuracy)
    assert [(b.low, b.classes, b.mean_accuracy) for b in bins] == [
        (2, 1, pytest.approx(1 / 3)), (8, 1, 1.0), (64, 1, 0.0), (128, 1, 0.75)]
