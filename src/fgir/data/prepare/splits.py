"""What every dataset preparer shares: the deterministic train/val split, count checks and the
files written (train_val.csv, train.csv, val.csv, test.csv, classid_classname.csv, dataset.yaml)."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import yaml

from fgir.errors import FgirError
from fgir.fileio import atomic_write_csv, atomic_write_text

Row = tuple[str, int]  # (path relative to the image folder, class id)


class CountMismatchError(FgirError):
    """The prepared dataset does not have the official number of images or classes."""


@dataclass
class Layout:
    """A dataset as read from its official layout."""

    name: str
    root: Path
    image_dir: str  # relative to root
    class_names: list[str]
    train_val: list[Row]
    test: list[Row]
    expected: tuple[int, int, int]  # classes, train_val images, test images


@dataclass
class PreparedDataset:
    out_dir: Path
    config_path: Path
    counts: dict[str, int]


def split_train_val(rows: list[Row], val_fraction: float = 0.2, seed: int = 0) -> tuple[list[Row], list[Row]]:
    """Per class: shuffle with a fixed seed, send round(val_fraction * n) images (at least one when
    the class has two or more) to val. Deterministic, and independent of the row order given."""
    by_class: dict[int, list[str]] = defaultdict(list)
    for path, label in rows:
        by_class[label].append(path)
    train, val = [], []
    for label in sorted(by_class):
        paths = sorted(by_class[label])
        random.Random(f"{seed}-{label}").shuffle(paths)
        n_val = max(1, round(val_fraction * len(paths))) if len(paths) >= 2 else 0
        val += [(p, label) for p in sorted(paths[:n_val])]
        train += [(p, label) for p in sorted(paths[n_val:])]
    return train, val


def verify_counts(layout: Layout) -> None:
    found = (len(layout.class_names), len(layout.train_val), len(layout.test))
    if found != layout.expected:
        raise CountMismatchError(
            f"{layout.name} at {layout.root}: expected {layout.expected[0]} classes, {layout.expected[1]} train_val and "
            f"{layout.expected[2]} test images, found {found[0]}, {found[1]} and {found[2]}; is the download complete? "
            "(pass --allow-count-mismatch to prepare a subset anyway)"
        )


def write_prepared(layout: Layout, out_dir: Path, check_counts: bool = True) -> PreparedDataset:
    if check_counts:
        verify_counts(layout)
    train, val = split_train_val(layout.train_val)
    splits = {"train_val": layout.train_val, "train": train, "val": val, "test": layout.test}
    for split, rows in splits.items():
        atomic_write_csv(out_dir / f"{split}.csv", ("class_id", "dir"), [(label, path) for path, label in rows])
    atomic_write_csv(out_dir / "classid_classname.csv", ("class_id", "class_name"), enumerate(layout.class_names))
    image_root = (layout.root / layout.image_dir).resolve()
    data = {"name": layout.name, "format": "csv", "root": str(out_dir.resolve()),
            "image_dir": str(image_root), "train": "train.csv", "val": "val.csv", "test": "test.csv",
            "class_names": "classid_classname.csv", "num_classes": len(layout.class_names)}
    config_path = out_dir / "dataset.yaml"
    atomic_write_text(config_path, yaml.safe_dump({"data": data}, sort_keys=False))
    return PreparedDataset(out_dir, config_path, {split: len(rows) for split, rows in splits.items()})
