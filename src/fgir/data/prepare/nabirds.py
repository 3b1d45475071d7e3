"""NABirds: `images/<class id>/*.jpg` with `images.txt` (id path), `image_class_labels.txt` (id class),
`train_test_split.txt` (id is_train) and `classes.txt` (class name). classes.txt lists every node of
the taxonomy; the classes are only the (sparse) ids that images are labelled with, remapped in id
order to 0..554."""

from __future__ import annotations

from pathlib import Path

from fgir.data.prepare.common import id_table
from fgir.data.prepare.splits import Layout
from fgir.data.readers import DatasetFileError

EXPECTED = (555, 23929, 24633)
HINT = "nabirds"


def read_layout(root: Path) -> Layout:
    images = id_table(root / "images.txt", HINT)
    labels = id_table(root / "image_class_labels.txt", HINT)
    is_train = id_table(root / "train_test_split.txt", HINT)
    names = id_table(root / "classes.txt", HINT)
    for image_id, path in images.items():
        for table, name in ((labels, "image_class_labels.txt"), (is_train, "train_test_split.txt")):
            if image_id not in table:
                raise DatasetFileError(f"{root / name}: no entry for image id {image_id} ({path})")
        if labels[image_id] not in names:
            raise DatasetFileError(f"{root / 'image_class_labels.txt'}: image {image_id} has class {labels[image_id]}, "
                                   "which classes.txt does not list")
        if is_train[image_id] not in ("0", "1"):
            raise DatasetFileError(f"{root / 'train_test_split.txt'}: image {image_id} has is_train "
                                   f"'{is_train[image_id]}', expected 0 or 1")
    try:
        class_ids = sorted({labels[image_id] for image_id in images}, key=int)
    except ValueError as error:
        raise DatasetFileError(f"{root / 'image_class_labels.txt'}: class ids must be integers ({error})") from error
    index = {class_id: i for i, class_id in enumerate(class_ids)}
    train_val, test = [], []
    for image_id, path in images.items():
        (train_val if is_train[image_id] == "1" else test).append((path, index[labels[image_id]]))
    return Layout(name="nabirds", root=root, image_dir="images", class_names=[names[c] for c in class_ids],
                  train_val=train_val, test=test, expected=EXPECTED)
