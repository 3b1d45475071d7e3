"""Evaluation report of a trained checkpoint on one split: metrics, per-image predictions, the
confusion matrix (table and heat map) and per-class accuracy, written into one folder.

Everything the model needs comes from the checkpoint; only the images come from the dataset, whose
description can be replaced (e.g. the same dataset unpacked somewhere else).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import torch

from fgir.config import Config, ConfigError, DataConfig, apply_overrides
from fgir.data import build_dataset, build_loader, build_transform
from fgir.engine.checkpoint import resolve_checkpoint_path, restore_model
from fgir.engine.device import resolve_device, resolve_precision
from fgir.engine.evaluator import predict_loader
from fgir.engine.metrics import classification_metrics, confusion_matrix, per_class_accuracy
from fgir.fileio import atomic_write_text
from fgir.tools.plots import confusion_heatmap

# A heat map with more classes than this has unreadable axes and takes minutes to render.
MAX_PLOT_CLASSES = 200


def default_report_dir(checkpoint: Path, split: str) -> Path:
    """`<run>/eval-<split>` for a checkpoint in `<run>/checkpoints/`, else beside the file."""
    parent = checkpoint.resolve().parent
    run_dir = parent.parent if parent.name == "checkpoints" else parent
    return run_dir / f"eval-{split}"


def checkpoint_data(config: Config, overrides: DataConfig | list[str] | None) -> DataConfig:
    """The data section to evaluate on: the checkpoint's own, replaced or with `data.*` overrides."""
    if overrides is None:
        return config.data
    if isinstance(overrides, DataConfig):
        return overrides
    foreign = [item for item in overrides if not item.startswith("data.")]
    if foreign:
        raise ConfigError(f"only data.* keys can be overridden when evaluating a checkpoint (the model comes "
                          f"from the checkpoint), got: {', '.join(foreign)}")
    return apply_overrides(config, overrides).data


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
) -> dict[str, Any]:
    """Score a checkpoint (file or run directory) on `split` and write the report into `out_dir`.

    `data_overrides` replaces the checkpoint's data section (a DataConfig) or changes some of its
    keys (`data.key=value` items, e.g. `data.root=/elsewhere`); the image size must stay the model's.
    Returns what metrics.json holds: accuracies in %, the sample count and where everything went.
    """
    path = resolve_checkpoint_path(checkpoint_path)
    torch_device = resolve_device(device)
    model, checkpoint = restore_model(path, torch_device)
    data = checkpoint_data(checkpoint.config, data_overrides)
    if data.image_size != checkpoint.config.data.image_size:
        raise ConfigError(
            f"data.image_size={data.image_size} but checkpoint {path} was trained at "
            f"{checkpoint.config.data.image_size} px; keep the checkpoint's image size"
        )

    dataset = build_dataset(data, split, build_transform(data, train=False))
    class_names = checkpoint.class_names
    if dataset.num_classes != len(class_names):
        raise ConfigError(
            f"checkpoint {path} predicts {len(class_names)} classes but dataset '{data.name}' "
            f"(root {data.root}) has {dataset.num_classes}"
        )
    loader = build_loader(dataset, batch_size=batch_size or data.eval_batch_size, train=False, seed=0,
                          num_workers=data.num_workers, pin_memory=torch_device.type == "cuda")
    dtype = resolve_precision(precision, torch_device)
    predictions = predict_loader(model, loader, torch_device, dtype, desc=split, progress=progress)

    out = Path(out_dir) if out_dir is not None else default_report_dir(path, split)
    logits, labels = predictions.logits, predictions.labels
    confusion = confusion_matrix(logits.argmax(dim=1), labels, len(class_names))
    write_predictions_csv(out / "predictions.csv", dataset.paths, logits, labels, class_names)
    write_confusion_csv(out / "confusion.csv", confusion, class_names)
    write_per_class_csv(out / "per_class.csv", confusion, class_names)
    if len(class_names) <= MAX_PLOT_CLASSES:
        confusion_heatmap(confusion, class_names, out / "confusion.png", title=f"{data.name} {split}")
        plot_note = "confusion.png"
    else:
        plot_note = f"skipped: {len(class_names)} classes > {MAX_PLOT_CLASSES} (see confusion.csv)"

    report = {
        **classification_metrics(logits, labels),
        "num_classes": len(class_names),
        "checkpoint": str(path.resolve()),
        "epoch": checkpoint.epoch,
        "split": split,
        "dataset": data.name,
        "data_root": str(Path(data.root).resolve()),
        "confusion_plot": plot_note,
        "out_dir": str(out.resolve()),
    }
    # Written last: a folder with metrics.json holds a complete report.
    atomic_write_text(out / "metrics.json", json.dumps(report, indent=1))
    return report


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def write_predictions_csv(path: Path, image_paths: list[str], logits: torch.Tensor, labels: torch.Tensor,
                          class_names: list[str]) -> None:
    """One row per image in dataset order, with the probability of the predicted class."""
    probability, prediction = logits.softmax(dim=1).max(dim=1)
    rows = [
        [image, label, class_names[label], pred, class_names[pred], f"{prob:.6f}"]
        for image, label, pred, prob in zip(image_paths, labels.tolist(), prediction.tolist(),
                                            probability.tolist(), strict=True)
    ]
    _write_csv(path, ["path", "label", "label_name", "prediction", "prediction_name", "probability"], rows)


def write_confusion_csv(path: Path, confusion: torch.Tensor, class_names: list[str]) -> None:
    """Rows are true classes, columns predicted classes, both named."""
    rows = [[name, *counts] for name, counts in zip(class_names, confusion.tolist(), strict=True)]
    _write_csv(path, ["true \\ predicted", *class_names], rows)


def write_per_class_csv(path: Path, confusion: torch.Tensor, class_names: list[str]) -> None:
    """Support and accuracy (in %, empty for classes absent from the split) of each class."""
    support = confusion.sum(dim=1).tolist()
    accuracy = per_class_accuracy(confusion).tolist()
    rows = [
        [class_id, name, count, "" if count == 0 else f"{100 * acc:.4f}"]
        for class_id, (name, count, acc) in enumerate(zip(class_names, support, accuracy, strict=True))
    ]
    _write_csv(path, ["class_id", "class_name", "support", "accuracy"], rows)
