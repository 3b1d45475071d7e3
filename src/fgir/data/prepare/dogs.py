"""Stanford Dogs: `Images/<wnid>-<Breed>/*.jpg` with `train_list.mat` and `test_list.mat` (MATLAB
variables `file_list`, paths relative to Images/, and `labels`, 1-based). Label k is the k-th breed
folder in sorted order; every listed file must lie in its label's folder."""

from __future__ import annotations

from pathlib import Path

from fgir.data.prepare.common import load_mat, mat_ints
from fgir.data.prepare.splits import Layout, Row
from fgir.data.readers import DatasetFileError

EXPECTED = (120, 12000, 8580)
HINT = "Stanford Dogs (with Images/ and the lists)"


def display_name(folder: str) -> str:
    """'n02085620-Chihuahua' -> 'Chihuahua', 'n02088094-Afghan_hound' -> 'Afghan hound'."""
    return folder.split("-", 1)[-1].replace("_", " ")


def _read_list(path: Path, folders: list[str]) -> list[Row]:
    data = load_mat(path, ("file_list", "labels"), HINT)
    files, labels = [str(f) for f in data["file_list"]], mat_ints(path, "labels", data["labels"])
    if len(files) != len(labels):
        raise DatasetFileError(f"{path}: {len(files)} entries in file_list but {len(labels)} labels")
    rows = []
    for i, (file, label) in enumerate(zip(files, labels, strict=True), start=1):
        if not 1 <= label <= len(folders):
            raise DatasetFileError(f"{path}: entry {i} ({file}) has label {label}, outside 1..{len(folders)} "
                                   f"(the number of breed folders in {path.parent / 'Images'})")
        if file.split("/")[0] != folders[label - 1]:
            raise DatasetFileError(f"{path}: entry {i} ({file}) has label {label}, whose folder is {folders[label - 1]}")
        rows.append((file, label - 1))
    return rows


def read_layout(root: Path) -> Layout:
    image_dir = root / "Images"
    if not image_dir.is_dir():
        raise DatasetFileError(f"{image_dir}: folder not found (is this the {HINT} folder?)")
    folders = sorted(p.name for p in image_dir.iterdir() if p.is_dir())
    return Layout(name="dogs", root=root, image_dir="Images", class_names=[display_name(f) for f in folders],
                  train_val=_read_list(root / "train_list.mat", folders),
                  test=_read_list(root / "test_list.mat", folders), expected=EXPECTED)
