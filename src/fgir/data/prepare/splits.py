"""What every dataset preparer shares: the deterministic train/val split, count checks and the
files written (train_val.csv, train.csv, val.csv, test.csv, classid_classname.csv, dataset.yaml)."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fgir.errors import FgirError
from fgir.fileio import atomic_write_csv, atomic_write_text

Row = tuple[str, int]  # (path relative to the image folder, class id)


class CountMismatchError(FgirError):
    """The prepared dataset does not have the official number of images or classes."""


class EmptySplitError(FgirError):
    """A split of the prepared dataset would have no images."""


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
    # The dataset's own validation split (rows of train_val), used instead of a derived one.
    val: list[Row] | None = None
    expected_val: int | None = None
    # No official test split (test is empty): hold out this fraction of each class as test.
    held_out_test: float = 0.0
    # More columns for classid_classname.csv after class_name (e.g. the raw tag), one value per class.
    class_columns: dict[str, list[str]] = field(default_factory=dict)
    # More keys for the `data:` section of the dataset YAML (e.g. mean and std).
    data_config: dict[str, Any] = field(default_factory=dict)
    config_file: str = "dataset.yaml"  # variants of one download prepared into one folder need their own


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
    found_val = None if layout.expected_val is None else len(layout.val or [])
    if (len(layout.class_names), len(layout.train_val), len(layout.test), found_val) != (*layout.expected, layout.expected_val):
        val, seen_val = ("", "") if found_val is None else (f" ({layout.expected_val} val)", f" ({found_val} val)")
        raise CountMismatchError(
            f"{layout.name} at {layout.root}: expected {layout.expected[0]} classes, {layout.expected[1]} train_val{val} and "
            f"{layout.expected[2]} test images, found {len(layout.class_names)}, {len(layout.train_val)}{seen_val} and "
            f"{len(layout.test)}; is the download complete? (pass --allow-count-mismatch to prepare a subset anyway)"
        )


def _splits(layout: Layout) -> dict[str, list[Row]]:
    train_val, test = layout.train_val, layout.test
    if layout.held_out_test:
        if test:
            raise ValueError(f"{layout.name}: held_out_test is for datasets without a test split")
        train_val, test = split_train_val(train_val, layout.held_out_test, seed=1)
    if layout.val is None:
        train, val = split_train_val(train_val)
    else:
        official_val = set(layout.val)
        train, val = [row for row in train_val if row not in official_val], layout.val
    return {"train_val": train_val, "train": train, "val": val, "test": test}


def refuse_empty_splits(layout: Layout, splits: dict[str, list[Row]]) -> None:
    """An empty split file would load as an error at training time, or leave a step untested."""
    empty = next((split for split, rows in splits.items() if not rows), None)
    if empty is None:
        return
    official = "the dataset's own split lists none"
    why = {
        "train_val": official,
        "train": "every train_val image is in the validation list",
        "val": official if layout.val is not None else "no class has 2 or more train_val images to hold one out",
        "test": "no class has 2 or more images to hold one out" if layout.held_out_test else official,
    }[empty]
    raise EmptySplitError(
        f"{layout.name} at {layout.root}: the {empty} split would have no images ({why}); found "
        f"{len(layout.class_names)} classes, {len(layout.train_val)} train_val and {len(layout.test)} test images "
        f"under {layout.root / layout.image_dir}. Nothing was written"
    )


def write_prepared(layout: Layout, out_dir: Path, check_counts: bool = True) -> PreparedDataset:
    if check_counts:
        verify_counts(layout)
    splits = _splits(layout)
    refuse_empty_splits(layout, splits)
    for split, rows in splits.items():
        atomic_write_csv(out_dir / f"{split}.csv", ("class_id", "dir"), [(label, path) for path, label in rows])
    columns = {"class_name": layout.class_names, **layout.class_columns}
    atomic_write_csv(out_dir / "classid_classname.csv", ("class_id", *columns),
                     [(i, *values) for i, values in enumerate(zip(*columns.values(), strict=True))])
    image_root = (layout.root / layout.image_dir).resolve()
    data = {"name": layout.name, "format": "csv", "root": str(out_dir.resolve()),
            "image_dir": str(image_root), "train": "train.csv", "val": "val.csv", "test": "test.csv",
            "class_names": "classid_classname.csv", "num_classes": len(layout.class_names), **layout.data_config}
    config_path = out_dir / layout.config_file
    atomic_write_text(config_path, yaml.safe_dump({"data": data}, sort_keys=False))
    return PreparedDataset(out_dir, config_path, {split: len(rows) for split, rows in splits.items()})
