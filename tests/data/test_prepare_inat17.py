import csv
import json

import pytest
from PIL import Image

from fgir.data.prepare import prepare_dataset
from fgir.data.prepare.splits import CountMismatchError

CATEGORIES = [(2, "Rubus ursinus", "Plantae"), (0, "Anas platyrhynchos", "Aves"), (1, "Pica pica", "Aves")]


def coco(images, annotations):
    return {"info": {"year": 2017}, "images": images, "annotations": annotations,
            "categories": [{"id": i, "name": n, "supercategory": s} for i, n, s in CATEGORIES]}


def make_mini_inat(root):
    """A miniature iNat2017 download: 3 categories (listed out of id order), 3 train + 2 val images each."""
    splits = {"train": coco([], []), "val": coco([], [])}
    image_id = 0
    for category, name, supercategory in CATEGORIES:
        folder = root / "train_val_images" / supercategory / name
        folder.mkdir(parents=True)
        for i in range(5):
            image_id += 1
            Image.new("RGB", (8, 8), (category * 60, i * 40, 0)).save(folder / f"{image_id:032x}.jpg")
            split = splits["train" if i < 3 else "val"]
            split["images"].append({"id": image_id, "file_name": f"train_val_images/{supercategory}/{name}/{image_id:032x}.jpg",
                                    "width": 8, "height": 8})
            split["annotations"].append({"id": image_id, "image_id": image_id, "category_id": category})
    for split, data in splits.items():
        (root / f"{split}2017.json").write_text(json.dumps(data))
    return splits


def read_rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_prepare_inat17_uses_val_as_test(tmp_path):
    make_mini_inat(tmp_path)
    prepared = prepare_dataset("inat17", tmp_path, tmp_path / "out", check_counts=False)
    assert prepared.counts == {"train_val": 9, "train": 6, "val": 3, "test": 6}
    names = [r["class_name"] for r in read_rows(tmp_path / "out" / "classid_classname.csv")]
    assert names == ["Anas platyrhynchos", "Pica pica", "Rubus ursinus"]
    test = read_rows(tmp_path / "out" / "test.csv")
    assert all(r["dir"].split("/")[1] == names[int(r["class_id"])] for r in test)
    assert all((tmp_path / "train_val_images" / r["dir"]).is_file() for r in test)


def test_inat17_count_mismatch_is_reported(tmp_path):
    make_mini_inat(tmp_path)
    with pytest.raises(CountMismatchError, match="expected 5089 classes, 579184 train_val and 95986 test images, found 3, 9 and 6"):
        prepare_dataset("inat17", tmp_path)


def test_inat17_unannotated_image_is_named(tmp_path):
    splits = make_mini_inat(tmp_path)
    del splits["val"]["annotations"][1]
    (tmp_path / "val2017.json").write_text(json.dumps(splits["val"]))
    with pytest.raises(Exception, match=r"val2017.json: image \d+ \(train_val_images/.+\) has no annotation"):
        prepare_dataset("inat17", tmp_path, check_counts=False)
