import csv

import pytest
from PIL import Image

from fgir.data.prepare import prepare_dataset
from fgir.data.prepare.splits import CountMismatchError

BREEDS = [("Abyssinian", 1), ("american_bulldog", 2), ("Bengal", 1)]  # (name prefix, species: 1 cat, 2 dog)


def make_mini_pets(root):
    """A miniature Oxford-IIIT Pets download: 3 breeds, 3 trainval + 2 test images each."""
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    lines = {"trainval": [], "test": []}
    for class_id, (breed, species) in enumerate(BREEDS, start=1):
        for i in range(1, 6):
            Image.new("RGB", (8, 8), (class_id * 60, i * 40, 0)).save(root / "images" / f"{breed}_{i}.jpg")
            lines["trainval" if i <= 3 else "test"].append(f"{breed}_{i} {class_id} {species} {class_id}")
    for split, split_lines in lines.items():
        (root / "annotations" / f"{split}.txt").write_text("\n".join(split_lines) + "\n")


def read_rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_prepare_pets_names_classes_from_image_names(tmp_path):
    make_mini_pets(tmp_path)
    prepared = prepare_dataset("pets", tmp_path, tmp_path / "out", check_counts=False)
    assert prepared.counts == {"train_val": 9, "train": 6, "val": 3, "test": 6}
    names = [r["class_name"] for r in read_rows(tmp_path / "out" / "classid_classname.csv")]
    assert names == ["Abyssinian", "american bulldog", "Bengal"]
    test = read_rows(tmp_path / "out" / "test.csv")
    assert all(r["dir"].rsplit("_", 1)[0] == BREEDS[int(r["class_id"])][0] for r in test)
    assert all((tmp_path / "images" / r["dir"]).is_file() for r in test)


def test_pets_count_mismatch_is_reported(tmp_path):
    make_mini_pets(tmp_path)
    with pytest.raises(CountMismatchError, match="expected 37 classes, 3680 train_val and 3669 test images, found 3, 9 and 6"):
        prepare_dataset("pets", tmp_path)


def test_pets_inconsistent_class_is_named(tmp_path):
    make_mini_pets(tmp_path)
    (tmp_path / "annotations" / "test.txt").write_text("Bengal_4 3 1 3\nBengal_5 1 1 3\n")
    with pytest.raises(Exception, match=r"test.txt:2: image Bengal_5 has class 1, which other lines give to 'Abyssinian'"):
        prepare_dataset("pets", tmp_path, check_counts=False)
