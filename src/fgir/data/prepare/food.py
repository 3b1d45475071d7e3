"""Food-101: `images/<class>/<id>.jpg` with `meta/{train,test}.txt` (lines '<class>/<id>', no
extension) and `meta/classes.txt` (one class per line, in class order)."""

from __future__ import annotations

from pathlib import Path

from fgir.data.prepare.common import text_lines
from fgir.data.prepare.splits import Layout, Row
from fgir.data.readers import DatasetFileError

EXPECTED = (101, 75750, 25250)
HINT = "food-101"


def _read_split(path: Path, index: dict[str, int]) -> list[Row]:
    rows = []
    for line_no, line in text_lines(path, HINT):
        folder, _, image_id = line.partition("/")
        if not image_id:
            raise DatasetFileError(f"{path}:{line_no}: expected '<class>/<image id>', got '{line}'")
        if folder not in index:
            raise DatasetFileError(f"{path}:{line_no}: class '{folder}' is not in classes.txt")
        rows.append((f"{line}.jpg", index[folder]))
    return rows


def read_layout(root: Path) -> Layout:
    meta = root / "meta"
    classes = [line for _, line in text_lines(meta / "classes.txt", HINT)]
    index = {name: i for i, name in enumerate(classes)}
    return Layout(name="food", root=root, image_dir="images", class_names=[c.replace("_", " ") for c in classes],
                  train_val=_read_split(meta / "train.txt", index), test=_read_split(meta / "test.txt", index),
                  expected=EXPECTED)
