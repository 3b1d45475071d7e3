import csv

import pytest
from PIL import Image

from fgir.config import load_config
from fgir.data.datasets import build_dataset, dataset_info
from fgir.data.prepare import PREPARERS, prepare_dataset
from fgir.data.prepare.splits import CountMismatchError
from fgir.data.readers import DatasetFileError

SUBSETS = ("R1", "R3", "R4", "R5", "R6")


def tiny_png(path, shade=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (shade, 0, 0)).save(path)


def make_named(root, classes=("1", "2", "10"), per_split=3):
    """A miniature Cotton80-style download: `images/<class>_<n>_<split>.png`, 3 train + 3 test per class."""
    for label in classes:
        for n in range(1, per_split + 1):
            for split in ("train", "test"):
                tiny_png(root / "images" / f"{label}_{n}_{split}.png", n)
    (root / "images" / "readme.txt").write_text("not an image")


def make_anno(root, labels=(1, 2, 3), per_split=3, prefix="img"):
    """A miniature SoyGene-style download: `images/...` with `anno/{train,test}.txt` lines
    '<path> <1-based label>'."""
    (root / "anno").mkdir(parents=True)
    for split in ("train", "test"):
        lines = []
        for label in labels:
            for n in range(per_split):
                relative = f"{prefix}{label}_{n}_{split}.jpg"
                tiny_png(root / "images" / relative, n)
                lines.append(f"{relative} {label}")
        (root / "anno" / f"{split}.txt").write_text("\n".join(lines) + "\n")


def read_rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_every_ultra_fgvc_dataset_has_a_preparer():
    ultra = {"cotton", "soylocal", "soyglobal", "soygene", "soyageing", *(f"soyageing_{s.lower()}" for s in SUBSETS)}
    assert ultra <= set(PREPARERS)


def test_named_images_give_class_and_split_from_the_file_name(tmp_path):
    make_named(tmp_path)
    prepared = prepare_dataset("cotton", tmp_path, tmp_path / "out", check_counts=False)
    assert prepared.counts == {"train_val": 9, "train": 6, "val": 3, "test": 9}
    names = [r["class_name"] for r in read_rows(tmp_path / "out" / "classid_classname.csv")]
    assert names == ["1", "2", "10"]  # numeric order, not text order
    for split, word in (("train_val", "train"), ("test", "test")):
        rows = read_rows(tmp_path / "out" / f"{split}.csv")
        assert all(r["dir"].split("_")[0] == names[int(r["class_id"])] for r in rows)
        assert all(r["dir"].endswith(f"_{word}.png") and (tmp_path / "images" / r["dir"]).is_file() for r in rows)


def test_named_images_may_sit_in_the_root(tmp_path):
    make_named(tmp_path)
    for path in (tmp_path / "images").iterdir():
        path.rename(tmp_path / path.name)
    (tmp_path / "images").rmdir()
    prepared = prepare_dataset("soylocal", tmp_path, tmp_path / "out", check_counts=False)
    assert prepared.counts["test"] == 9
    assert all((tmp_path / r["dir"]).is_file() for r in read_rows(tmp_path / "out" / "test.csv"))


@pytest.mark.parametrize("bad_name", ["leaf.png", "1_2.png", "1_x_train.png", "1_2_val.png", "_2_train.png"])
def test_a_bad_image_name_is_named(tmp_path, bad_name):
    make_named(tmp_path)
    tiny_png(tmp_path / "images" / bad_name)
    with pytest.raises(DatasetFileError, match=rf"{bad_name}: expected an image named '<class>_<n>_<train\|test>.png'"):
        prepare_dataset("soyglobal", tmp_path, check_counts=False)


@pytest.mark.parametrize("name,expected", [
    ("cotton", "80 classes, 240 train_val and 240 test"),
    ("soylocal", "200 classes, 600 train_val and 600 test"),
    ("soyglobal", "1938 classes, 5814 train_val and 5814 test"),
])
def test_named_count_mismatch_is_reported(tmp_path, name, expected):
    make_named(tmp_path)
    with pytest.raises(CountMismatchError, match=f"expected {expected} images, found 3, 9 and 9"):
        prepare_dataset(name, tmp_path)


def test_anno_labels_are_remapped_in_numeric_order(tmp_path):
    make_anno(tmp_path, labels=(1, 2, 10))
    prepared = prepare_dataset("soygene", tmp_path, tmp_path / "out", check_counts=False)
    assert prepared.counts == {"train_val": 9, "train": 6, "val": 3, "test": 9}
    assert [r["class_name"] for r in read_rows(tmp_path / "out" / "classid_classname.csv")] == ["1", "2", "10"]
    test = read_rows(tmp_path / "out" / "test.csv")
    assert {(r["dir"], int(r["class_id"])) for r in test} == {
        (f"img{label}_{n}_test.jpg", index) for index, label in enumerate((1, 2, 10)) for n in range(3)}
    assert all((tmp_path / "images" / r["dir"]).is_file() for r in test)


def test_soygene_count_mismatch_is_reported(tmp_path):
    make_anno(tmp_path)
    with pytest.raises(CountMismatchError, match="expected 1110 classes, 12763 train_val and 11143 test images, found 3, 9 and 9"):
        prepare_dataset("soygene", tmp_path)


@pytest.mark.parametrize("line", ["img1_0_test.jpg", "img1_0_test.jpg one", "img1_0_test.jpg -1"])
def test_a_bad_anno_line_is_named_with_file_and_line(tmp_path, line):
    make_anno(tmp_path)
    (tmp_path / "anno" / "test.txt").write_text(f"img1_1_test.jpg 1\n{line}\n")
    with pytest.raises(DatasetFileError, match=r"anno/test.txt:2: expected '<image path> <class label>' with an integer label"):
        prepare_dataset("soygene", tmp_path, check_counts=False)


def test_a_missing_anno_file_names_the_dataset(tmp_path):
    make_anno(tmp_path)
    (tmp_path / "anno" / "train.txt").unlink()
    with pytest.raises(DatasetFileError, match=r"anno/train.txt: file not found \(is this the SoyGene folder\?\)"):
        prepare_dataset("soygene", tmp_path, check_counts=False)


def make_soyageing(root):
    """Five subsets sharing labels 1-3, each with 2 train + 2 test images per class."""
    for subset in SUBSETS:
        make_anno(root / subset, per_split=2, prefix=f"{subset.lower()}_")


def test_soyageing_subset_prepares_into_its_own_folder(tmp_path):
    make_soyageing(tmp_path)
    prepared = prepare_dataset("soyageing_r3", tmp_path / "R3", check_counts=False)
    assert prepared.out_dir == tmp_path / "R3"
    assert prepared.counts == {"train_val": 6, "train": 3, "val": 3, "test": 6}
    assert all(r["dir"].startswith("r3_") and (tmp_path / "R3" / "images" / r["dir"]).is_file()
               for r in read_rows(tmp_path / "R3" / "test.csv"))
    with pytest.raises(CountMismatchError, match="expected 198 classes, 990 train_val and 990 test images, found 3, 6 and 6"):
        prepare_dataset("soyageing_r3", tmp_path / "R3")


def test_soyageing_subset_refuses_another_subsets_folder(tmp_path):
    make_soyageing(tmp_path)
    with pytest.raises(DatasetFileError, match="R4: this is SoyAgeing subset R4, not R1 \\(prepare it as soyageing_r4\\)"):
        prepare_dataset("soyageing_r1", tmp_path / "R4", check_counts=False)


def test_soyageing_subset_from_the_soyageing_folder_points_to_the_subset(tmp_path):
    make_soyageing(tmp_path)
    with pytest.raises(DatasetFileError, match=f"this is the SoyAgeing folder; prepare subset R6 from {tmp_path / 'R6'}"):
        prepare_dataset("soyageing_r6", tmp_path, check_counts=False)


def test_soyageing_joins_the_five_subsets_with_shared_classes(tmp_path):
    make_soyageing(tmp_path)
    prepared = prepare_dataset("soyageing", tmp_path, tmp_path / "out", check_counts=False)
    assert prepared.counts["train_val"] == prepared.counts["test"] == 5 * 3 * 2
    assert len(read_rows(tmp_path / "out" / "classid_classname.csv")) == 3
    test = read_rows(tmp_path / "out" / "test.csv")
    assert {r["dir"].split("/")[0] for r in test} == set(SUBSETS)
    assert all((tmp_path / r["dir"]).is_file() for r in test)
    # The same label means the same class in every subset.
    class_1 = [r["dir"] for r in test if r["class_id"] == "1"]
    assert len(class_1) == 5 * 2 and {d.split("/")[-1].split("_")[1] for d in class_1} == {"2"}
    with pytest.raises(CountMismatchError, match="expected 198 classes, 4950 train_val and 4950 test images, found 3, 30 and 30"):
        prepare_dataset("soyageing", tmp_path)


def test_soyageing_names_a_missing_subset(tmp_path):
    make_soyageing(tmp_path)
    (tmp_path / "R5" / "anno" / "train.txt").unlink()
    (tmp_path / "R5" / "anno" / "test.txt").unlink()
    (tmp_path / "R5" / "anno").rmdir()
    with pytest.raises(DatasetFileError, match="no R5/anno folder"):
        prepare_dataset("soyageing", tmp_path, check_counts=False)


@pytest.mark.parametrize("name,folder", [("soyageing", ""), ("soyageing_r4", "R4"), ("soygene", None), ("cotton", None)])
def test_the_written_dataset_config_reads_every_image(tmp_path, name, folder):
    if folder is None:
        (make_anno if name == "soygene" else make_named)(tmp_path)
        root = tmp_path
    else:
        make_soyageing(tmp_path)
        root = tmp_path / folder
    prepared = prepare_dataset(name, root, tmp_path / "out", check_counts=False)
    data = load_config(prepared.config_path).data
    assert dataset_info(data) == (3, read_names(tmp_path / "out"))
    for split in ("train", "val", "test"):
        dataset = build_dataset(data, split, None)
        assert len(dataset) == prepared.counts[split]
        assert dataset[len(dataset) - 1][0].size == (4, 4)


def read_names(out):
    return [r["class_name"] for r in read_rows(out / "classid_classname.csv")]
