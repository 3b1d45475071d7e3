"""fgir's accuracy and calibration metrics against torchmetrics as an independent oracle."""

import pytest
import torch
import torchmetrics.functional.classification as tm

from fgir.engine.metrics import (
    classification_metrics,
    confusion_matrix,
    expected_calibration_error,
    per_class_accuracy,
    reliability_bins,
)

CLASSES = 7


def scores(absent_class: bool = False):
    """Random logits (no ties) and labels; with `absent_class` the last class has no sample."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(500, CLASSES, generator=generator) * 2
    labels = torch.randint(0, CLASSES - 1 if absent_class else CLASSES, (500,), generator=generator)
    return logits, labels


@pytest.mark.parametrize("k", [1, 5])
def test_top_k_accuracy_equals_torchmetrics(k):
    logits, labels = scores()
    ours = classification_metrics(logits, labels)[f"top{k}"]
    theirs = 100 * tm.multiclass_accuracy(logits, labels, CLASSES, average="micro", top_k=k).item()
    assert ours == pytest.approx(theirs, abs=1e-5)


def test_per_class_and_mean_class_accuracy_equal_torchmetrics_when_every_class_is_present():
    logits, labels = scores()
    ours = per_class_accuracy(confusion_matrix(logits.argmax(1), labels, CLASSES))
    theirs = tm.multiclass_accuracy(logits, labels, CLASSES, average="none")
    torch.testing.assert_close(ours.float(), theirs, rtol=0, atol=1e-6)
    mean = classification_metrics(logits, labels)["mean_class_acc"]
    assert mean == pytest.approx(100 * tm.multiclass_accuracy(logits, labels, CLASSES, average="macro").item(), abs=1e-4)


def test_a_class_absent_from_the_split_is_left_out_of_the_mean_where_torchmetrics_counts_it_as_zero():
    """The documented difference: fgir's per-class accuracy is NaN for a class with no sample and its
    mean covers the classes present; torchmetrics scores that class 0 and averages over all."""
    logits, labels = scores(absent_class=True)
    ours = per_class_accuracy(confusion_matrix(logits.argmax(1), labels, CLASSES))
    theirs = tm.multiclass_accuracy(logits, labels, CLASSES, average="none")
    assert ours[-1].isnan() and theirs[-1] == 0
    torch.testing.assert_close(ours[:-1].float(), theirs[:-1], rtol=0, atol=1e-6)
    macro = 100 * tm.multiclass_accuracy(logits, labels, CLASSES, average="macro").item()
    mean = classification_metrics(logits, labels)["mean_class_acc"]
    assert mean == pytest.approx(macro * CLASSES / (CLASSES - 1), abs=1e-4)


@pytest.mark.parametrize("n_bins", [5, 15])
def test_expected_calibration_error_equals_torchmetrics(n_bins):
    logits, labels = scores()
    theirs = tm.multiclass_calibration_error(logits.softmax(1), labels, CLASSES, n_bins=n_bins, norm="l1").item()
    assert expected_calibration_error(logits, labels, n_bins) == pytest.approx(theirs, abs=1e-6)


def test_confidences_on_bin_edges_fall_in_the_same_bins_as_torchmetrics():
    """0.6 and 0.8 are edges of 5 and 15 equal bins: both count an edge in the bin it closes."""
    probabilities = torch.tensor([[0.6, 0.4], [0.6, 0.4], [0.8, 0.2], [0.4, 0.6]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 1])
    confidence, prediction = probabilities.max(1)
    for n_bins in (5, 15):
        theirs = tm.multiclass_calibration_error(probabilities.float(), labels, 2, n_bins=n_bins, norm="l1").item()
        assert reliability_bins(confidence, prediction == labels, n_bins).ece == pytest.approx(theirs, abs=1e-6)
