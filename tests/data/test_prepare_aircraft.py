import csv

import pytest
from PIL import Image

from fgir.data.prepare import prepare_dataset
from fgir.data.prepare.splits import CountMismatchError

VARIANTS = ["707-320", "Boeing 717", "Cessna 172"]


def make_mini_aircraft(root):
    """A miniature fgvc-aircraft-2013b download: 3 variants (names with spaces), 3 trainval + 2 test each."""
    images = root / "data" / "images"
    images.mkdir(parents=True)
    lines = {"trainval": [], "test": []}
    for c, variant in enumerate(VARIANTS):
        for i in range(5):
            image_id = f"{1000000 + 10 * c + i:07d}"
            Image.new("RGB", (8, 8), (c * 60, i * 40, 0)).save(images / f"{image_id}.jpg")
            lines["trainval" if i < 3 else "test"].append(f"{image_id} {variant}")
    for split, split_lines in lines.items():
        (root / "data" / f"images_variant_{split}.txt").write_text("\n".join(split_lines) + "\n")
    (root / "data" / "variants.txt").write_text("\n".join(VARIANTS) + "\n")


def read_rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_prepare_aircraft_variants(tmp_path):
    make_mini_aircraft(tmp_path)
    prepared = prepare_dataset("aircraft", tmp_path, tmp_path / "out", check_counts=False)
    assert prepared.counts == {"train_val": 9, "train": 6, "val": 3, "test": 6}
    names = [r["class_name"] for r in read_rows(tmp_path / "out" / "classid_classname.csv")]
    assert names == VARIANTS
    test = read_rows(tmp_path / "out" / "test.csv")
    assert sorted((r["dir"], r["class_id"]) for r in test) == sorted(
        (f"{1000000 + 10 * c + i:07d}.jpg", str(c)) for c in range(3) for i in (3, 4))
    assert all((tmp_path / "data" / "images" / r["dir"]).is_file() for r in test)


def test_aircraft_count_mismatch_is_reported(tmp_path):
    make_mini_aircraft(tmp_path)
    with pytest.raises(CountMismatchError, match="expected 100 classes, 6667 train_val and 3333 test images, found 3, 9 and 6"):
        prepare_dataset("aircraft", tmp_path)


def test_aircraft_unknown_variant_is_named(tmp_path):
    make_mini_aircraft(tmp_path)
    (tmp_path / "data" / "images_variant_test.txt").write_text("1000003 707-320\n1000004 Boeing 747\n")
    with pytest.raises(Exception, match=r"images_variant_test.txt:2: variant 'Boeing 747' is not in variants.txt"):
        prepare_dataset("aircraft", tmp_path, check_counts=False)
