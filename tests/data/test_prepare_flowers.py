import csv

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from fgir.data.prepare import prepare_dataset
from fgir.data.prepare.splits import CountMismatchError

LABELS = [2, 1, 3, 1, 2, 3, 3, 1, 2, 1, 2, 3, 1, 2, 3]  # class of image_00001.jpg, image_00002.jpg, ...
SETID = {"trnid": [1, 2, 3], "valid": [4, 5, 6], "tstid": [7, 8, 9, 10, 11, 12, 13, 14, 15]}


def make_mini_flowers(root, setid=SETID):
    """A miniature Flowers-102 download: 15 images of 3 classes; 1 x N row vectors as in the official files."""
    (root / "jpg").mkdir(parents=True)
    for n, label in enumerate(LABELS, start=1):
        Image.new("RGB", (8, 8), (label * 60, n * 10, 0)).save(root / "jpg" / f"image_{n:05d}.jpg")
    savemat(root / "imagelabels.mat", {"labels": np.array([LABELS], dtype=np.uint8)})
    savemat(root / "setid.mat", {k: np.array([v], dtype=np.uint16) for k, v in setid.items()})


def read_rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_prepare_flowers_joins_train_and_valid(tmp_path):
    make_mini_flowers(tmp_path)
    prepared = prepare_dataset("flowers", tmp_path, tmp_path / "out", check_counts=False)
    assert prepared.counts == {"train_val": 6, "train": 3, "val": 3, "test": 9}
    names = [r["class_name"] for r in read_rows(tmp_path / "out" / "classid_classname.csv")]
    assert names == ["1", "2", "3"]
    train_val = {(r["dir"], int(r["class_id"])) for r in read_rows(tmp_path / "out" / "train_val.csv")}
    assert train_val == {(f"image_{n:05d}.jpg", LABELS[n - 1] - 1) for n in range(1, 7)}
    assert all((tmp_path / "jpg" / path).is_file() for path, _ in train_val)


def test_flowers_count_mismatch_is_reported(tmp_path):
    make_mini_flowers(tmp_path)
    with pytest.raises(CountMismatchError, match="expected 102 classes, 2040 train_val and 6149 test images, found 3, 6 and 9"):
        prepare_dataset("flowers", tmp_path)


def test_flowers_unlabelled_image_is_named(tmp_path):
    make_mini_flowers(tmp_path, {**SETID, "tstid": [7, 16]})
    with pytest.raises(Exception, match=r"setid.mat: tstid lists image 16, but imagelabels.mat labels only images 1..15"):
        prepare_dataset("flowers", tmp_path, check_counts=False)
