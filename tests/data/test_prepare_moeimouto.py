import csv
from collections import Counter

import pytest
import yaml
from PIL import Image

from fgir.data.prepare import prepare_dataset
from fgir.data.prepare.splits import CountMismatchError

FOLDERS = {"000_hatsune_miku": 10, "015_c.c": 6, "072_melon-chan": 5, "997_ana_coppola": 2}


def make_mini_moeimouto(root):
    for folder, n in FOLDERS.items():
        (root / "data" / folder).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(root / "data" / folder / f"face_{100 + i}_{i}_{i}.png")
        (root / "data" / folder / "color.csv").write_text("not an image\n")


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_per_class_held_out_test_and_val(tmp_path):
    make_mini_moeimouto(tmp_path)
    prepared = prepare_dataset("moeimouto", tmp_path, tmp_path / "out", check_counts=False)
    splits = {s: read_rows(tmp_path / "out" / f"{s}.csv") for s in ("train_val", "train", "val", "test")}
    counts = {s: Counter(int(r["class_id"]) for r in rows) for s, rows in splits.items()}
    # round(0.2 n), at least one: test 2, 1, 1, 1 (of 10, 6, 5, 2); val the same rule on the rest.
    assert counts["test"] == {0: 2, 1: 1, 2: 1, 3: 1}
    assert counts["val"] == {0: 2, 1: 1, 2: 1}  # class 3 keeps its one remaining image for training
    assert prepared.counts == {"train_val": 18, "train": 14, "val": 4, "test": 5}
    paths = {s: {r["dir"] for r in rows} for s, rows in splits.items()}
    assert paths["train_val"].isdisjoint(paths["test"])
    assert paths["train"] | paths["val"] == paths["train_val"] and paths["train"].isdisjoint(paths["val"])
    assert len(paths["train_val"] | paths["test"]) == sum(FOLDERS.values())  # every image once, no color.csv
    assert all((tmp_path / "data" / p).is_file() for p in paths["test"])
    assert all(r["dir"].split("/")[0] == list(FOLDERS)[int(r["class_id"])] for r in splits["train_val"])


def test_split_is_deterministic(tmp_path):
    make_mini_moeimouto(tmp_path)
    prepare_dataset("moeimouto", tmp_path, tmp_path / "a", check_counts=False)
    prepare_dataset("moeimouto", tmp_path, tmp_path / "b", check_counts=False)
    for split in ("train", "val", "test"):
        assert (tmp_path / "a" / f"{split}.csv").read_text() == (tmp_path / "b" / f"{split}.csv").read_text()


def test_display_names_from_folders(tmp_path):
    make_mini_moeimouto(tmp_path)
    prepared = prepare_dataset("moeimouto", tmp_path, tmp_path / "out", check_counts=False)
    names = read_rows(tmp_path / "out" / "classid_classname.csv")
    assert [(r["class_name"], r["folder"]) for r in names] == [
        ("Hatsune Miku", "000_hatsune_miku"), ("C.C", "015_c.c"), ("Melon-chan", "072_melon-chan"),
        ("Ana Coppola", "997_ana_coppola")]
    data = yaml.safe_load(prepared.config_path.read_text())["data"]
    assert (data["mean"], data["image_dir"]) == ([0.5] * 3, str((tmp_path / "data").resolve()))


def test_moeimouto_count_mismatch(tmp_path):
    make_mini_moeimouto(tmp_path)
    with pytest.raises(CountMismatchError, match="expected 173 classes, 14395 train_val and 0 test images, found 4, 23 and 0"):
        prepare_dataset("moeimouto", tmp_path)
