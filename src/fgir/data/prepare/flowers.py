"""Oxford Flowers-102: `jpg/image_NNNNN.jpg` with `imagelabels.mat` (`labels`: class of image n,
1-based) and `setid.mat` (`trnid`, `valid`, `tstid`: 1-based image numbers). train_val is trnid
plus valid. The download names no classes, so the class names are the official label numbers."""

from __future__ import annotations

from pathlib import Path

from fgir.data.prepare.common import load_mat, mat_ints
from fgir.data.prepare.splits import Layout, Row
from fgir.data.readers import DatasetFileError

EXPECTED = (102, 2040, 6149)
HINT = "Flowers-102 (with jpg/, imagelabels.mat and setid.mat)"


def _rows(path: Path, field: str, ids: list[int], labels: list[int]) -> list[Row]:
    rows = []
    for image_id in ids:
        if not 1 <= image_id <= len(labels):
            raise DatasetFileError(f"{path}: {field} lists image {image_id}, but imagelabels.mat labels "
                                   f"only images 1..{len(labels)}")
        rows.append((f"image_{image_id:05d}.jpg", labels[image_id - 1] - 1))
    return rows


def read_layout(root: Path) -> Layout:
    labels_path, setid_path = root / "imagelabels.mat", root / "setid.mat"
    labels = mat_ints(labels_path, "labels", load_mat(labels_path, ("labels",), HINT)["labels"])
    if min(labels, default=1) < 1:
        raise DatasetFileError(f"{labels_path}: labels must be 1-based, found {min(labels)}")
    setid = load_mat(setid_path, ("trnid", "valid", "tstid"), HINT)
    split = {field: mat_ints(setid_path, field, values) for field, values in setid.items()}
    return Layout(name="flowers", root=root, image_dir="jpg",
                  class_names=[str(k) for k in range(1, max(labels, default=0) + 1)],
                  train_val=_rows(setid_path, "trnid", split["trnid"], labels)
                  + _rows(setid_path, "valid", split["valid"], labels),
                  test=_rows(setid_path, "tstid", split["tstid"], labels), expected=EXPECTED)
