import csv

import pytest
from PIL import Image

from fgir.data.prepare import prepare_dataset
from fgir.data.prepare.splits import CountMismatchError

SUBSETS = {"veg": ("veg200_images", "veg200_lists", ["bok_choy", "carrot"]),
           "fru": ("fru92_images", "fru92_lists", ["apple", "mango"])}


def make_mini_vegfru(root):
    """A miniature VegFru download: 2 vegetables and 2 fruits, 2 train, 1 val, 2 test images each."""
    for prefix, (image_folder, list_folder, classes) in SUBSETS.items():
        (root / list_folder).mkdir(parents=True)
        lines = {"train": [], "val": [], "test": []}
        for label, name in enumerate(classes):
            (root / image_folder / name).mkdir(parents=True)
            for i, split in enumerate(["train", "train", "val", "test", "test"]):
                file = f"{name}_{i}.jpg"
                Image.new("RGB", (8, 8), (label * 90, i * 40, 0)).save(root / image_folder / name / file)
                lines[split].append(f"{name}/{file} {label}")
        for split, split_lines in lines.items():
            (root / list_folder / f"{prefix}_{split}.txt").write_text("\n".join(split_lines) + "\n")


def read_rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_prepare_vegfru_offsets_fruit_labels_after_vegetables(tmp_path):
    make_mini_vegfru(tmp_path)
    prepared = prepare_dataset("vegfru", tmp_path, tmp_path / "out", check_counts=False)
    assert prepared.counts["train_val"] == 12 and prepared.counts["test"] == 8
    names = [r["class_name"] for r in read_rows(tmp_path / "out" / "classid_classname.csv")]
    assert names == ["bok choy", "carrot", "apple", "mango"]
    test = read_rows(tmp_path / "out" / "test.csv")
    assert {(r["class_id"], r["dir"].split("/")[1]) for r in test} == {
        ("0", "bok_choy"), ("1", "carrot"), ("2", "apple"), ("3", "mango")}
    assert all((tmp_path / r["dir"]).is_file() for r in test)


def test_vegfru_count_mismatch_is_reported(tmp_path):
    make_mini_vegfru(tmp_path)
    with pytest.raises(CountMismatchError, match="expected 292 classes, 43800 train_val and 116931 test images"):
        prepare_dataset("vegfru", tmp_path)


@pytest.mark.parametrize("line, message", [
    ("apple/apple_9.jpg x", r"fru_test.txt:1: expected '<class folder>/<file> <label>'"),
    ("apple/apple_9.jpg 92", r"fru_test.txt:1: label 92 outside 0..91"),
    ("mango/apple_9.jpg 0", r"fru_test.txt:1: folder 'mango' has label 0, which other lines give to 'apple'"),
])
def test_vegfru_bad_list_lines_are_named(tmp_path, line, message):
    make_mini_vegfru(tmp_path)
    (tmp_path / "fru92_lists" / "fru_test.txt").write_text(line + "\n")
    with pytest.raises(Exception, match=message):
        prepare_dataset("vegfru", tmp_path, check_counts=False)
