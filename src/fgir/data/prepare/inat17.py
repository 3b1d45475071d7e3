"""iNaturalist 2017: `train_val_images/<super>/<class>/*.jpg` with COCO-style `train2017.json` and
`val2017.json` (`images` [{id, file_name}] with file_name relative to the root, `annotations`
[{image_id, category_id}], `categories` [{id, name}]). The official val split is our test split;
classes are the categories in id order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fgir.data.prepare.common import require_file
from fgir.data.prepare.splits import Layout, Row
from fgir.data.readers import DatasetFileError

EXPECTED = (5089, 579184, 95986)
HINT = "iNat2017"
PREFIX = "train_val_images/"


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(require_file(path, HINT).read_text())
    except json.JSONDecodeError as error:
        raise DatasetFileError(f"{path}: not valid JSON ({error})") from error
    missing = [key for key in ("images", "annotations", "categories") if key not in data]
    if missing:
        raise DatasetFileError(f"{path}: no {', '.join(missing)} list")
    return data


def _field(path: Path, section: str, i: int, entry: dict[str, Any], key: str) -> Any:
    if key not in entry:
        raise DatasetFileError(f"{path}: {section}[{i}] has no '{key}'")
    return entry[key]


def _rows(path: Path, data: dict[str, Any], index: dict[int, int]) -> list[Row]:
    files = {_field(path, "images", i, image, "id"): _field(path, "images", i, image, "file_name")
             for i, image in enumerate(data["images"])}
    labels = {}
    for i, annotation in enumerate(data["annotations"]):
        image_id = _field(path, "annotations", i, annotation, "image_id")
        category = _field(path, "annotations", i, annotation, "category_id")
        if category not in index:
            raise DatasetFileError(f"{path}: annotations[{i}] has category_id {category}, "
                                   "which the categories of train2017.json do not list")
        labels[image_id] = index[category]
    rows = []
    for image_id, file_name in files.items():
        if image_id not in labels:
            raise DatasetFileError(f"{path}: image {image_id} ({file_name}) has no annotation")
        if not file_name.startswith(PREFIX):
            raise DatasetFileError(f"{path}: image {image_id} has file_name '{file_name}', expected '{PREFIX}...'")
        rows.append((file_name.removeprefix(PREFIX), labels[image_id]))
    return rows


def read_layout(root: Path) -> Layout:
    train_path, val_path = root / "train2017.json", root / "val2017.json"
    train = _load(train_path)
    categories = {_field(train_path, "categories", i, c, "id"): _field(train_path, "categories", i, c, "name")
                  for i, c in enumerate(train["categories"])}
    category_ids = sorted(categories)
    index = {category_id: i for i, category_id in enumerate(category_ids)}
    return Layout(name="inat17", root=root, image_dir="train_val_images",
                  class_names=[categories[c] for c in category_ids], train_val=_rows(train_path, train, index),
                  test=_rows(val_path, _load(val_path), index), expected=EXPECTED)
