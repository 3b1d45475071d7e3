import csv

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from fgir.data.prepare import prepare_dataset
from fgir.data.prepare.splits import CountMismatchError

BREEDS = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02088094-Afghan_hound"]


def save_list(path, files, labels):
    """As in the official lists: an N x 1 cell array of paths and an N x 1 double vector of labels."""
    savemat(path, {"file_list": np.array(files, dtype=object).reshape(-1, 1),
                            "annotation_list": np.array([f[:-4] for f in files], dtype=object).reshape(-1, 1),
                            "labels": np.array(labels, dtype=float).reshape(-1, 1)})


def make_mini_dogs(root):
    """A miniature Stanford Dogs download: 3 breeds, 3 train + 2 test images each."""
    lists = {"train": ([], []), "test": ([], [])}
    for label, breed in enumerate(BREEDS, start=1):
        (root / "Images" / breed).mkdir(parents=True)
        for i in range(5):
            rel = f"{breed}/{breed.split('-')[0]}_{i}.jpg"
            Image.new("RGB", (8, 8), (label * 60, i * 40, 0)).save(root / "Images" / rel)
            files, labels = lists["train" if i < 3 else "test"]
            files.append(rel)
            labels.append(label)
    for split, (files, labels) in lists.items():
        save_list(root / f"{split}_list.mat", files, labels)


def read_rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_prepare_dogs_reads_the_mat_lists(tmp_path):
    make_mini_dogs(tmp_path)
    prepared = prepare_dataset("dogs", tmp_path, tmp_path / "out", check_counts=False)
    assert prepared.counts == {"train_val": 9, "train": 6, "val": 3, "test": 6}
    names = [r["class_name"] for r in read_rows(tmp_path / "out" / "classid_classname.csv")]
    assert names == ["Chihuahua", "Japanese spaniel", "Afghan hound"]
    test = read_rows(tmp_path / "out" / "test.csv")
    assert all(r["dir"].split("/")[0] == BREEDS[int(r["class_id"])] for r in test)
    assert all((tmp_path / "Images" / r["dir"]).is_file() for r in test)


def test_dogs_count_mismatch_is_reported(tmp_path):
    make_mini_dogs(tmp_path)
    with pytest.raises(CountMismatchError, match="expected 120 classes, 12000 train_val and 8580 test images, found 3, 9 and 6"):
        prepare_dataset("dogs", tmp_path)


def test_dogs_label_that_disagrees_with_the_folder_is_named(tmp_path):
    make_mini_dogs(tmp_path)
    save_list(tmp_path / "test_list.mat", [f"{BREEDS[0]}/n02085620_3.jpg"], [2])
    with pytest.raises(Exception, match=r"test_list.mat: entry 1 \(n02085620-Chihuahua/n02085620_3.jpg\) has label 2"):
        prepare_dataset("dogs", tmp_path, check_counts=False)
