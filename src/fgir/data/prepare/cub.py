"""CUB-200-2011: `images/<NNN.Name>/*.jpg` with `images.txt` (id path), `image_class_labels.txt`
(id class, 1-based), `train_test_split.txt` (id is_train) and `classes.txt` (class NNN.Name)."""

from __future__ import annotations

from pathlib import Path

from fgir.data.prepare.common import id_table
from fgir.data.prepare.splits import Layout
from fgir.data.readers import DatasetFileError

EXPECTED = (200, 5994, 5794)
HINT = "CUB_200_2011"


def display_name(folder: str) -> str:
    """'001.Black_footed_Albatross' -> 'Black footed Albatross'."""
    return folder.split(".", 1)[-1].replace("_", " ")


def read_layout(root: Path) -> Layout:
    images = id_table(root / "images.txt", HINT)
    labels = id_table(root / "image_class_labels.txt", HINT)
    is_train = id_table(root / "train_test_split.txt", HINT)
    classes = id_table(root / "classes.txt", HINT)
    class_ids = sorted(classes, key=int)
    index = {class_id: i for i, class_id in enumerate(class_ids)}  # 1-based ids -> 0..199
    train_val, test = [], []
    for image_id, path in images.items():
        for table, name in ((labels, "image_class_labels.txt"), (is_train, "train_test_split.txt")):
            if image_id not in table:
                raise DatasetFileError(f"{root / name}: no entry for image id {image_id} ({path})")
        if labels[image_id] not in index:
            raise DatasetFileError(f"{root / 'image_class_labels.txt'}: image {image_id} has class {labels[image_id]}, "
                                   "which classes.txt does not list")
        (train_val if is_train[image_id] == "1" else test).append((path, index[labels[image_id]]))
    return Layout(name="cub", root=root, image_dir="images",
                  class_names=[display_name(classes[c]) for c in class_ids],
                  train_val=train_val, test=test, expected=EXPECTED)
