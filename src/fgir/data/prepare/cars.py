"""Stanford Cars: `car_ims/*.jpg` with `cars_annos.mat`, whose `annotations` struct array gives per
image `relative_im_path` ('car_ims/000001.jpg'), `class` (1-based) and `test` (1 for the test split),
and whose `class_names` cell array names the classes in label order."""

from __future__ import annotations

from pathlib import Path

from fgir.data.prepare.common import load_mat
from fgir.data.prepare.splits import Layout
from fgir.data.readers import DatasetFileError

EXPECTED = (196, 8144, 8041)
HINT = "Stanford Cars (with car_ims/ and cars_annos.mat)"
FIELDS = ("relative_im_path", "class", "test")
PREFIX = "car_ims/"


def read_layout(root: Path) -> Layout:
    path = root / "cars_annos.mat"
    data = load_mat(path, ("annotations", "class_names"), HINT)
    annotations, class_names = data["annotations"], [str(name) for name in data["class_names"]]
    missing = [f for f in FIELDS if f not in (annotations.dtype.names or ())]
    if missing:
        raise DatasetFileError(f"{path}: annotations has no field {', '.join(missing)}")
    train_val, test = [], []
    for i, record in enumerate(annotations, start=1):
        image, label, is_test = str(record["relative_im_path"]), int(record["class"]), int(record["test"])
        if not image.startswith(PREFIX):
            raise DatasetFileError(f"{path}: annotations({i}).relative_im_path is '{image}', expected '{PREFIX}...'")
        if not 1 <= label <= len(class_names):
            raise DatasetFileError(f"{path}: annotations({i}).class is {label}, outside 1..{len(class_names)}")
        if is_test not in (0, 1):
            raise DatasetFileError(f"{path}: annotations({i}).test is {is_test}, expected 0 or 1")
        (test if is_test else train_val).append((image.removeprefix(PREFIX), label - 1))
    return Layout(name="cars", root=root, image_dir="car_ims", class_names=class_names,
                  train_val=train_val, test=test, expected=EXPECTED)
