import csv

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from fgir.data.prepare import prepare_dataset
from fgir.data.prepare.splits import CountMismatchError

CLASSES = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012"]


def save_annos(root, records, class_names=CLASSES):
    """As in the official file: a 1 x N struct array (with bounding boxes) and a 1 x C cell array."""
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    annotations = np.zeros((1, len(records)), dtype=[(f, "O") for f in fields])
    for i, (path, label, is_test) in enumerate(records):
        annotations[0, i] = (path, 0, 0, 7, 7, np.uint8(label), np.uint8(is_test))
    savemat(root / "cars_annos.mat", {"annotations": annotations,
                                      "class_names": np.array(class_names, dtype=object).reshape(1, -1)})


def make_mini_cars(root):
    """A miniature Stanford Cars download: 3 classes, 3 train + 2 test images each, one flat folder."""
    (root / "car_ims").mkdir(parents=True)
    records = []
    for label in range(1, 4):
        for i in range(5):
            path = f"car_ims/{len(records) + 1:06d}.jpg"
            Image.new("RGB", (8, 8), (label * 60, i * 40, 0)).save(root / path)
            records.append((path, label, int(i >= 3)))
    save_annos(root, records)
    return records


def read_rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_prepare_cars_reads_the_annotation_struct(tmp_path):
    records = make_mini_cars(tmp_path)
    prepared = prepare_dataset("cars", tmp_path, tmp_path / "out", check_counts=False)
    assert prepared.counts == {"train_val": 9, "train": 6, "val": 3, "test": 6}
    names = [r["class_name"] for r in read_rows(tmp_path / "out" / "classid_classname.csv")]
    assert names == CLASSES
    test = {(r["dir"], int(r["class_id"])) for r in read_rows(tmp_path / "out" / "test.csv")}
    assert test == {(p.removeprefix("car_ims/"), label - 1) for p, label, is_test in records if is_test}
    assert all((tmp_path / "car_ims" / path).is_file() for path, _ in test)


def test_cars_count_mismatch_is_reported(tmp_path):
    make_mini_cars(tmp_path)
    with pytest.raises(CountMismatchError, match="expected 196 classes, 8144 train_val and 8041 test images, found 3, 9 and 6"):
        prepare_dataset("cars", tmp_path)


def test_cars_bad_class_is_named(tmp_path):
    make_mini_cars(tmp_path)
    save_annos(tmp_path, [("car_ims/000001.jpg", 1, 0), ("car_ims/000002.jpg", 4, 0)])
    with pytest.raises(Exception, match=r"cars_annos.mat: annotations\(2\).class is 4, outside 1..3"):
        prepare_dataset("cars", tmp_path, check_counts=False)
