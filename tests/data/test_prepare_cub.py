import csv

import pytest
from PIL import Image

from fgir.config import load_config
from fgir.data import build_dataset, build_transform
from fgir.data.prepare import prepare_dataset
from fgir.data.prepare.splits import CountMismatchError, split_train_val


def make_mini_cub(root, per_class=(5, 3)):
    """A miniature CUB_200_2011 in the official layout: 3 classes, 5 train + 3 test images each."""
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    images, labels, split = [], [], []
    image_id = 0
    for c, folder in enumerate(classes, start=1):
        (root / "images" / folder).mkdir(parents=True)
        for i in range(sum(per_class)):
            image_id += 1
            rel = f"{folder}/{folder.split('.')[1]}_{i:04d}.jpg"
            Image.new("RGB", (20, 16), (c * 40, i * 10, 0)).save(root / "images" / rel)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c}")
            split.append(f"{image_id} {int(i < per_class[0])}")
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (root / "classes.txt").write_text("\n".join(f"{i} {c}" for i, c in enumerate(classes, start=1)) + "\n")


def read_rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_prepare_cub_writes_the_split_csvs_and_a_usable_dataset_config(tmp_path):
    root = tmp_path / "CUB_200_2011"
    make_mini_cub(root)
    prepared = prepare_dataset("cub", root, tmp_path / "out", check_counts=False)
    assert prepared.counts == {"train_val": 15, "train": 12, "val": 3, "test": 9}
    names = read_rows(tmp_path / "out" / "classid_classname.csv")
    assert [r["class_name"] for r in names] == ["Black footed Albatross", "Laysan Albatross", "Sooty Albatross"]
    train_val = read_rows(tmp_path / "out" / "train_val.csv")
    train, val = read_rows(tmp_path / "out" / "train.csv"), read_rows(tmp_path / "out" / "val.csv")
    assert sorted(r["dir"] for r in train + val) == sorted(r["dir"] for r in train_val)
    assert all(r["dir"].split("/")[0][:3] == f"{int(r['class_id']) + 1:03d}" for r in train_val)
    config = load_config(prepared.config_path, ["data.image_size=16", "data.resize_ratio=1.0"])
    test_set = build_dataset(config.data, "test", build_transform(config.data, train=False))
    image, label = test_set[0]
    assert len(test_set) == 9 and image.shape == (3, 16, 16) and test_set.num_classes == 3


def test_count_check_names_expected_and_found(tmp_path):
    make_mini_cub(tmp_path)
    with pytest.raises(CountMismatchError, match="expected 200 classes, 5994 train_val and 5794 test images, found 3, 15 and 9"):
        prepare_dataset("cub", tmp_path)
    assert not (tmp_path / "train.csv").exists()  # nothing written when the check fails


def test_train_val_split_is_deterministic_per_class_and_order_free():
    rows = [(f"c{c}/{i}.jpg", c) for c in range(3) for i in range(10)]
    train, val = split_train_val(rows)
    assert split_train_val(list(reversed(rows))) == (train, val)
    assert [sum(1 for _, c in val if c == k) for k in range(3)] == [2, 2, 2]
    assert not set(train) & set(val)


def test_a_broken_annotation_file_is_named(tmp_path):
    make_mini_cub(tmp_path)
    (tmp_path / "train_test_split.txt").write_text("1 1\n2\n")
    with pytest.raises(Exception, match=r"train_test_split.txt:2: expected 'id value'"):
        prepare_dataset("cub", tmp_path, check_counts=False)
