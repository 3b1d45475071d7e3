"""FGVC-Aircraft, variant level: `data/images/<id>.jpg` with `data/images_variant_{trainval,test}.txt`
(lines '<image id> <variant name>', the name may contain spaces) and `data/variants.txt` (one variant
per line, in class order)."""

from __future__ import annotations

from pathlib import Path

from fgir.data.prepare.common import text_lines
from fgir.data.prepare.splits import Layout, Row
from fgir.data.readers import DatasetFileError

EXPECTED = (100, 6667, 3333)
HINT = "fgvc-aircraft-2013b"


def _read_split(path: Path, index: dict[str, int]) -> list[Row]:
    rows = []
    for line_no, line in text_lines(path, HINT):
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise DatasetFileError(f"{path}:{line_no}: expected '<image id> <variant>', got '{line}'")
        image_id, variant = parts
        if variant not in index:
            raise DatasetFileError(f"{path}:{line_no}: variant '{variant}' is not in variants.txt")
        rows.append((f"{image_id}.jpg", index[variant]))
    return rows


def read_layout(root: Path) -> Layout:
    data = root / "data"
    variants = [line for _, line in text_lines(data / "variants.txt", HINT)]
    index = {variant: i for i, variant in enumerate(variants)}
    return Layout(name="aircraft", root=root, image_dir="data/images", class_names=variants,
                  train_val=_read_split(data / "images_variant_trainval.txt", index),
                  test=_read_split(data / "images_variant_test.txt", index), expected=EXPECTED)
