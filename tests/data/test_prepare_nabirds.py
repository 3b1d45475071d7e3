import csv

import pytest
from PIL import Image

from fgir.data.prepare import prepare_dataset
from fgir.data.prepare.splits import CountMismatchError

# classes.txt lists taxonomy nodes (0 Birds, 1 Perching Birds) as well as the sparse leaf classes.
CLASSES = {"0": "Birds", "1": "Perching Birds", "295": "Black-chinned Hummingbird",
           "817": "Oak Titmouse", "1003": "Bald Eagle (Adult, subadult)"}
LEAVES = ["1003", "295", "817"]  # in file order, not id order


def make_mini_nabirds(root):
    """A miniature NABirds download: 3 sparse classes, 3 train + 2 test images each, uuid image ids."""
    images, labels, split = [], [], []
    for c, class_id in enumerate(LEAVES):
        folder = root / "images" / f"{int(class_id):04d}"
        folder.mkdir(parents=True)
        for i in range(5):
            image_id = f"{c:08x}{i:024x}"
            Image.new("RGB", (8, 8), (c * 60, i * 40, 0)).save(folder / f"{image_id}.jpg")
            images.append(f"{image_id} {int(class_id):04d}/{image_id}.jpg")
            labels.append(f"{image_id} {class_id}")
            split.append(f"{image_id} {int(i < 3)}")
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (root / "classes.txt").write_text("".join(f"{k} {v}\n" for k, v in CLASSES.items()))


def read_rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_prepare_nabirds_remaps_sparse_leaf_classes(tmp_path):
    make_mini_nabirds(tmp_path)
    prepared = prepare_dataset("nabirds", tmp_path, tmp_path / "out", check_counts=False)
    assert prepared.counts == {"train_val": 9, "train": 6, "val": 3, "test": 6}
    names = [r["class_name"] for r in read_rows(tmp_path / "out" / "classid_classname.csv")]
    assert names == ["Black-chinned Hummingbird", "Oak Titmouse", "Bald Eagle (Adult, subadult)"]
    for split in ("train_val", "test"):
        for row in read_rows(tmp_path / "out" / f"{split}.csv"):
            assert (tmp_path / "images" / row["dir"]).is_file()
            assert row["dir"].split("/")[0] == ("0295", "0817", "1003")[int(row["class_id"])]


def test_nabirds_count_mismatch_is_reported(tmp_path):
    make_mini_nabirds(tmp_path)
    with pytest.raises(CountMismatchError, match="expected 555 classes, 23929 train_val and 24633 test images, found 3, 9 and 6"):
        prepare_dataset("nabirds", tmp_path)


def test_nabirds_label_outside_classes_txt_is_named(tmp_path):
    make_mini_nabirds(tmp_path)
    labels = tmp_path / "image_class_labels.txt"
    labels.write_text(labels.read_text().replace(" 817\n", " 9999\n", 1))
    with pytest.raises(Exception, match=r"image_class_labels.txt: image \w+ has class 9999"):
        prepare_dataset("nabirds", tmp_path, check_counts=False)
