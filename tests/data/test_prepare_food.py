import csv

import pytest
from PIL import Image

from fgir.data.prepare import prepare_dataset
from fgir.data.prepare.splits import CountMismatchError

CLASSES = ["apple_pie", "baby_back_ribs", "baklava"]


def make_mini_food(root):
    """A miniature food-101 download: 3 classes, 3 train + 2 test images each."""
    (root / "meta").mkdir(parents=True)
    lines = {"train": [], "test": []}
    for c, name in enumerate(CLASSES):
        (root / "images" / name).mkdir(parents=True)
        for i in range(5):
            image_id = 100000 * (c + 1) + i
            Image.new("RGB", (8, 8), (c * 60, i * 40, 0)).save(root / "images" / name / f"{image_id}.jpg")
            lines["train" if i < 3 else "test"].append(f"{name}/{image_id}")
    for split, split_lines in lines.items():
        (root / "meta" / f"{split}.txt").write_text("\n".join(split_lines) + "\n")
    (root / "meta" / "classes.txt").write_text("\n".join(CLASSES) + "\n")


def read_rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_prepare_food_adds_the_extension(tmp_path):
    make_mini_food(tmp_path)
    prepared = prepare_dataset("food", tmp_path, tmp_path / "out", check_counts=False)
    assert prepared.counts == {"train_val": 9, "train": 6, "val": 3, "test": 6}
    names = [r["class_name"] for r in read_rows(tmp_path / "out" / "classid_classname.csv")]
    assert names == ["apple pie", "baby back ribs", "baklava"]
    test = read_rows(tmp_path / "out" / "test.csv")
    assert all(r["dir"].split("/")[0] == CLASSES[int(r["class_id"])] for r in test)
    assert all((tmp_path / "images" / r["dir"]).is_file() for r in test)


def test_food_count_mismatch_is_reported(tmp_path):
    make_mini_food(tmp_path)
    with pytest.raises(CountMismatchError, match="expected 101 classes, 75750 train_val and 25250 test images, found 3, 9 and 6"):
        prepare_dataset("food", tmp_path)


def test_food_unknown_class_is_named(tmp_path):
    make_mini_food(tmp_path)
    (tmp_path / "meta" / "test.txt").write_text("apple_pie/100003\nbeignets/400000\n")
    with pytest.raises(Exception, match=r"test.txt:2: class 'beignets' is not in classes.txt"):
        prepare_dataset("food", tmp_path, check_counts=False)
