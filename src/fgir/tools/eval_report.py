"""Evaluation report of a trained checkpoint on one split, written into one folder: metrics
(top-1/5, mean per-class accuracy, head / medium / tail accuracy by training-set frequency, NLL and
expected calibration error before and after the stored temperature), per-image predictions, the
confusion matrix (table and heat map), per-class accuracy with training counts, a plot of class
accuracy against training frequency and a reliability diagram.

Everything the model needs comes from the checkpoint; only the images come from the dataset, whose
description can be replaced (e.g. the same dataset unpacked somewhere else).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from fgir.config import DataConfig
from fgir.data import build_dataset
from fgir.engine.longtail import GROUPS, binned_accuracy, class_frequencies, long_tail_metrics
from fgir.engine.metrics import (
    answered_at,
    classification_metrics,
    confusion_matrix,
    logit_reliability,
    negative_log_likelihood,
    per_class_accuracy,
    top_confidence,
)
from fgir.errors import FgirError
from fgir.fileio import atomic_write_csv, atomic_write_text
from fgir.hub import is_hub_reference, parse_reference
from fgir.tools.calibration import ECE_BINS, read_calibration
from fgir.tools.plots import accuracy_vs_frequency, confusion_heatmap, reliability_diagram
from fgir.tools.scoring import score_split

# A heat map with more classes than this has unreadable axes and takes minutes to render.
MAX_PLOT_CLASSES = 200
# Thresholds of `fgir predict --unknown-below` the report shows the effect of.
UNKNOWN_THRESHOLDS = (0.3, 0.5, 0.7, 0.9)


def default_report_dir(checkpoint: Path, split: str) -> Path:
    """`<run>/eval-<split>` for a checkpoint in `<run>/checkpoints/`, else beside the file."""
    parent = checkpoint.resolve().parent
    run_dir = parent.parent if parent.name == "checkpoints" else parent
    return run_dir / f"eval-{split}"


def evaluate_checkpoint(
    checkpoint_path: str | os.PathLike,
    *,
    split: str = "test",
    data_overrides: DataConfig | list[str] | None = None,
    out_dir: str | os.PathLike | None = None,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int | None = None,
    progress: bool = True,
    compile: bool = False,
    weights: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Score a checkpoint (file or run directory) on `split` and write the report into `out_dir`.

    `data_overrides` replaces the checkpoint's data section (a DataConfig) or changes some of its
    keys (`data.key=value` items, e.g. `data.root=/elsewhere` or `data.long_tail.head_above=50`);
    the image size must stay the model's. Returns what metrics.json holds: accuracies and ECE in %,
    the sample count and where everything went. `compile`: torch.compile with frozen weights.
    `weights`: the backbone weights of an adapter-only checkpoint (see `restore_model`).
    """
    scored = score_split(checkpoint_path, split, data_overrides=data_overrides, device=device,
                         precision=precision, batch_size=batch_size, progress=progress, compile=compile,
                         weights=weights)
    path, data, class_names = scored.path, scored.data, scored.checkpoint.class_names
    if out_dir is None and is_hub_reference(checkpoint_path):  # not into the Hub cache
        out_dir = f"eval-{parse_reference(checkpoint_path).repo_id.rpartition('/')[2]}-{split}"
    out = Path(out_dir) if out_dir is not None else default_report_dir(path, split)
    logits, labels = scored.logits, scored.labels
    confusion = confusion_matrix(logits.argmax(dim=1), labels, len(class_names))
    train_counts, train_note = training_counts(data, len(class_names))
    write_predictions_csv(out / "predictions.csv", scored.paths, logits, labels, class_names)
    write_confusion_csv(out / "confusion.csv", confusion, class_names)
    write_per_class_csv(out / "per_class.csv", confusion, class_names, train_counts)
    if len(class_names) <= MAX_PLOT_CLASSES:
        confusion_heatmap(confusion, class_names, out / "confusion.png", title=f"{data.name} {split}")
        plot_note = "confusion.png"
    else:
        plot_note = f"skipped: {len(class_names)} classes > {MAX_PLOT_CLASSES} (see confusion.csv)"

    thresholds = (data.long_tail.head_above, data.long_tail.tail_below)
    if train_counts is None:
        long_tail: dict[str, Any] = {"skipped": train_note}
        frequency_note = f"skipped: {train_note}"
    else:
        long_tail = {"head_above": thresholds[0], "tail_below": thresholds[1],
                     "train_images": int(train_counts.sum()), **long_tail_metrics(confusion, train_counts, *thresholds)}
        accuracy = per_class_accuracy(confusion)
        accuracy_vs_frequency(train_counts, accuracy, binned_accuracy(train_counts, accuracy),
                              out / "accuracy_vs_frequency.png", thresholds, title=f"{data.name} {split}")
        frequency_note = "accuracy_vs_frequency.png"

    report = {
        **classification_metrics(logits, labels),
        "long_tail": long_tail,
        **calibration_metrics(logits, labels, path, out / "reliability.png", title=f"{data.name} {split}"),
        "num_classes": len(class_names),
        "skipped_images": scored.skipped,
        "checkpoint": str(path.resolve()),
        "epoch": scored.checkpoint.epoch,
        "split": split,
        "dataset": data.name,
        "data_root": str(Path(data.root).resolve()),
        "confusion_plot": plot_note,
        "frequency_plot": frequency_note,
        "reliability_plot": "reliability.png",
        "out_dir": str(out.resolve()),
    }
    # Written last: a folder with metrics.json holds a complete report.
    atomic_write_text(out / "metrics.json", json.dumps(report, indent=1))
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report of `evaluate_checkpoint` as a few aligned lines a person reads; metrics.json in the
    report's folder keeps every number."""
    lines = [f"{report['dataset']} {report['split']}: {report['num_samples']} images scored, "
             f"{report['num_classes']} classes ({report['checkpoint']})"]
    if report["skipped_images"]:
        lines.append(f"skipped: {len(report['skipped_images'])} unreadable images (listed in metrics.json)")
    lines += [
        f"  top-1            {_percent(report['top1'])}",
        f"  top-5            {_percent(report['top5'])}",
        f"  mean class acc   {_percent(report['mean_class_acc'])} (std {_percent(report['std_class_acc'])})",
    ]
    temperature = report["temperature"]
    if temperature is None:
        lines += [f"  NLL              {report['nll']:.4f}",
                  f"  ECE              {_percent(report['ece'])} (not calibrated: see fgir calibrate)"]
    else:
        lines += [f"  NLL              {report['nll']:.4f} -> {report['nll_calibrated']:.4f} after T = "
                  f"{temperature:.3g} (fitted on {report['temperature_split']})",
                  f"  ECE              {_percent(report['ece'])} -> {_percent(report['ece_calibrated'])}"]
    long_tail = report["long_tail"]
    if "skipped" in long_tail:
        lines.append(f"  head/medium/tail {long_tail['skipped']}")
    else:
        lines.append(f"  training images per class: head > {long_tail['head_above']}, "
                     f"tail < {long_tail['tail_below']}")
        for group in GROUPS:
            stats = long_tail[group]
            scored = (f"top-1 {_percent(stats['top1'])}, mean class acc {_percent(stats['mean_class_acc'])}"
                      if stats["samples"] else "no images in this split")
            lines.append(f"  {group:<16} {scored} ({stats['classes']} classes, {stats['samples']} images)")
    written = ["metrics.json", "predictions.csv", "confusion.csv", "per_class.csv", report["reliability_plot"]]
    written += [plot for plot in (report["confusion_plot"], report["frequency_plot"]) if not plot.startswith("skipped")]
    lines.append(f"written to {report['out_dir']}: {', '.join(written)}")
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.2f}%"  # NaN: no class present


def training_counts(data: DataConfig, num_classes: int) -> tuple[torch.Tensor | None, str]:
    """Images per class in the train split (its label file only, no image is opened), or None and
    the reason when the split cannot be read (then the report skips the frequency groups)."""
    try:
        train = build_dataset(data, "train", transform=None)
    except (FgirError, OSError) as err:
        return None, f"train split unavailable, no head/medium/tail groups ({err})"
    return class_frequencies(train.labels, num_classes), ""


def calibration_metrics(logits: torch.Tensor, labels: torch.Tensor, checkpoint: Path, plot: Path,
                        title: str) -> dict[str, Any]:
    """NLL and ECE (%) of the raw softmax and, when the checkpoint holds a fitted temperature, of the
    softmax of logits / T; a reliability diagram of both; and, with the probabilities `predict` uses
    (after T), how many images each "unknown below" threshold answers and how well."""
    calibration = read_calibration(checkpoint)
    temperature = 1.0 if calibration is None else float(calibration["temperature"])
    raw = logit_reliability(logits, labels, ECE_BINS)
    metrics: dict[str, Any] = {"nll": negative_log_likelihood(logits, labels), "ece": 100 * raw.ece,
                               "temperature": None}
    panels = [("softmax", raw)]
    if calibration is not None:
        scaled = logit_reliability(logits, labels, ECE_BINS, temperature)
        metrics.update(temperature=temperature, temperature_split=calibration.get("split"),
                       nll_calibrated=negative_log_likelihood(logits, labels, temperature),
                       ece_calibrated=100 * scaled.ece)
        panels.append((f"softmax(logits / {temperature:.3g})", scaled))
    reliability_diagram(panels, plot, title=title)
    confidence, prediction = top_confidence(logits, temperature)
    metrics["unknown_below"] = [answered_at(confidence, prediction == labels, threshold)
                                for threshold in UNKNOWN_THRESHOLDS]
    return metrics


def write_predictions_csv(path: Path, image_paths: list[str], logits: torch.Tensor, labels: torch.Tensor,
                          class_names: list[str]) -> None:
    """One row per image in dataset order, with the probability of the predicted class."""
    probability, prediction = logits.softmax(dim=1).max(dim=1)
    rows = [
        [image, label, class_names[label], pred, class_names[pred], f"{prob:.6f}"]
        for image, label, pred, prob in zip(image_paths, labels.tolist(), prediction.tolist(),
                                            probability.tolist(), strict=True)
    ]
    atomic_write_csv(path, ["path", "label", "label_name", "prediction", "prediction_name", "probability"], rows)


def write_confusion_csv(path: Path, confusion: torch.Tensor, class_names: list[str]) -> None:
    """Rows are true classes, columns predicted classes, both named."""
    rows = [[name, *counts] for name, counts in zip(class_names, confusion.tolist(), strict=True)]
    atomic_write_csv(path, ["true \\ predicted", *class_names], rows)


def write_per_class_csv(path: Path, confusion: torch.Tensor, class_names: list[str],
                        train_counts: torch.Tensor | None = None) -> None:
    """Support and accuracy (in %, empty for classes absent from the split) of each class, and its
    number of training images (empty when the train split is unavailable)."""
    support = confusion.sum(dim=1).tolist()
    accuracy = per_class_accuracy(confusion).tolist()
    trained = [""] * len(class_names) if train_counts is None else train_counts.tolist()
    rows = [
        [class_id, name, count, "" if count == 0 else f"{100 * acc:.4f}", train]
        for class_id, (name, count, acc, train) in enumerate(zip(class_names, support, accuracy, trained,
                                                                  strict=True))
    ]
    atomic_write_csv(path, ["class_id", "class_name", "support", "accuracy", "train_count"], rows)
