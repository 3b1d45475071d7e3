"""VegFru: `veg200_images/<class>/*.jpg` and `fru92_images/<class>/*.jpg` with split lists
`veg200_lists/veg_{train,val,test}.txt` and `fru92_lists/fru_{train,val,test}.txt`, lines
'<class>/<file> <label>'. Vegetables keep labels 0-199; fruit labels (0-91 in their own lists) follow
the vegetables (200-291), as in the combined 292-class benchmark. The official train and val lists together are
train_val (43,800 images); our own per-class 80/20 split then picks hyper-parameters. Class names
are the folder names, which must agree within a label."""

from __future__ import annotations

from pathlib import Path

from fgir.data.prepare.common import text_lines
from fgir.data.prepare.splits import Layout, Row
from fgir.data.readers import DatasetFileError

EXPECTED = (292, 43800, 116931)
HINT = "VegFru (with veg200_images/, fru92_images/ and their *_lists/)"
# (image folder, list folder, list prefix, class count), vegetables first
SUBSETS = (("veg200_images", "veg200_lists", "veg", 200), ("fru92_images", "fru92_lists", "fru", 92))


def _read_list(path: Path, image_folder: str, offset: int, num_classes: int, names: dict[int, str]) -> list[Row]:
    rows = []
    for line_no, line in text_lines(path, HINT):
        parts = line.split()
        if len(parts) != 2 or "/" not in parts[0] or not parts[1].isdigit():
            raise DatasetFileError(f"{path}:{line_no}: expected '<class folder>/<file> <label>', got '{line}'")
        relative, label = parts[0], int(parts[1])
        if not label < num_classes:
            raise DatasetFileError(f"{path}:{line_no}: label {label} outside 0..{num_classes - 1}")
        folder = relative.split("/")[0]
        label += offset
        if names.setdefault(label, folder) != folder:
            raise DatasetFileError(f"{path}:{line_no}: folder '{folder}' has label {label - offset}, which other "
                                   f"lines give to '{names[label]}'")
        rows.append((f"{image_folder}/{relative}", label))
    return rows


def read_layout(root: Path) -> Layout:
    names: dict[int, str] = {}
    splits: dict[str, list[Row]] = {"train": [], "val": [], "test": []}
    for image_folder, list_folder, prefix, num_classes in SUBSETS:
        offset = max(names, default=-1) + 1  # labels of this subset follow those of the previous one
        for split, rows in splits.items():
            rows += _read_list(root / list_folder / f"{prefix}_{split}.txt", image_folder, offset, num_classes, names)
    missing = sorted(set(range(max(names, default=-1) + 1)) - set(names))
    if missing:
        raise DatasetFileError(f"{root}: no image of label {', '.join(map(str, missing[:10]))} in any split list, "
                               "so its class name is unknown")
    class_names = [names[label].replace("_", " ") for label in sorted(names)]
    return Layout(name="vegfru", root=root, image_dir=".", class_names=class_names,
                  train_val=splits["train"] + splits["val"], test=splits["test"], expected=EXPECTED)
