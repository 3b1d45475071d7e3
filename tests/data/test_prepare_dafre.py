import csv

import pytest
import yaml

from fgir.config import load_config
from fgir.data.datasets import dataset_info
from fgir.data.prepare import prepare_dataset
from fgir.data.prepare.splits import CountMismatchError
from fgir.data.readers import DatasetFileError, read_class_names

TAGS = ["hatsune_miku", "edelgard_von_hresvelgr_(fire_emblem)", "saber_(fate/stay_night)", "rémi_(ça,_va)"]
DISPLAY = ["Hatsune Miku", "Edelgard von Hresvelgr (Fire Emblem)", "Saber (Fate/Stay Night)", "Rémi (Ça, Va)"]
# Per class: train, val, test images (every class in every split, as in DAF:re).
PER_SPLIT = {"train": 3, "val": 1, "test": 2}


def make_mini_dafre(root, header=False):
    """A miniature DAF:re download: headerless label files, 4-digit bucket folders, both variants."""
    (root / "labels").mkdir(parents=True)
    rows = {split: [] for split in PER_SPLIT}
    post = 190000
    for label in range(len(TAGS)):
        for split, n in PER_SPLIT.items():
            for _ in range(n):
                post += 7
                rows[split].append((label, f"{post % 10000:04d}/{post}.jpg"))
    for split, split_rows in rows.items():
        lines = (["class_id,dir"] if header else []) + [f"{label},{path}" for label, path in split_rows]
        (root / "labels" / f"{split}.csv").write_text("\n".join(lines) + "\n")
    with open(root / "labels" / "classid_classname.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(enumerate(TAGS))
    (root / "faces").mkdir()
    (root / "fullMin256").mkdir()
    return rows


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def as_pairs(rows):
    return [(int(r["class_id"]), r["dir"]) for r in rows]


@pytest.mark.parametrize("header", [False, True], ids=["as distributed", "glsim header"])
def test_official_splits_are_kept(tmp_path, header):
    given = make_mini_dafre(tmp_path, header)
    prepared = prepare_dataset("dafre_faces", tmp_path, tmp_path / "out", check_counts=False)
    assert prepared.counts == {"train_val": 16, "train": 12, "val": 4, "test": 8}
    for split in ("train", "val", "test"):
        assert as_pairs(read_rows(tmp_path / "out" / f"{split}.csv")) == given[split]
    assert as_pairs(read_rows(tmp_path / "out" / "train_val.csv")) == given["train"] + given["val"]


def test_names_file_has_display_names_and_the_raw_tags(tmp_path):
    make_mini_dafre(tmp_path)
    prepare_dataset("dafre_faces", tmp_path, tmp_path / "out", check_counts=False)
    names = read_rows(tmp_path / "out" / "classid_classname.csv")
    assert [r["class_name"] for r in names] == DISPLAY
    assert [r["tag"] for r in names] == TAGS
    assert [(r["character"], r["series"]) for r in names][:2] == [("Hatsune Miku", ""), ("Edelgard von Hresvelgr", "Fire Emblem")]
    # The shared reader takes the class_name column, not the extra ones (nor a comma-joined mix).
    assert read_class_names(tmp_path / "out" / "classid_classname.csv") == DISPLAY


def test_both_variants_prepare_into_one_folder(tmp_path):
    make_mini_dafre(tmp_path)
    faces = prepare_dataset("dafre_faces", tmp_path, check_counts=False)
    full = prepare_dataset("dafb", tmp_path, check_counts=False)
    assert (faces.config_path.name, full.config_path.name) == ("dafre_faces.yaml", "dafb.yaml")
    for prepared, folder in ((faces, "faces"), (full, "fullMin256")):
        data = yaml.safe_load(prepared.config_path.read_text())["data"]
        assert data["image_dir"] == str((tmp_path / folder).resolve())
        assert (data["mean"], data["std"], data["num_classes"]) == ([0.5] * 3, [0.5] * 3, 4)
        config = load_config(prepared.config_path)  # what `fgir train` reads, names included
        assert dataset_info(config.data) == (4, DISPLAY)


def test_count_mismatch_names_every_count(tmp_path):
    make_mini_dafre(tmp_path)
    with pytest.raises(CountMismatchError, match=r"expected 3263 classes, 368997 train_val \(46050 val\) and 94440 test "
                                                  r"images, found 4, 16 \(4 val\) and 8"):
        prepare_dataset("dafb", tmp_path)
    assert not (tmp_path / "train.csv").exists()


def test_bad_label_row_is_named_by_file_and_line(tmp_path):
    make_mini_dafre(tmp_path)
    (tmp_path / "labels" / "val.csv").write_text("0,0001/190001.jpg\n4,0002/190002.jpg\n")
    with pytest.raises(DatasetFileError, match=r"val.csv:2: class_id must be >= 0, < 4 \(the number of classes\), got 4"):
        prepare_dataset("dafre_faces", tmp_path, check_counts=False)


def test_missing_variant_folder_is_explained(tmp_path):
    make_mini_dafre(tmp_path)
    (tmp_path / "fullMin256").rmdir()
    with pytest.raises(DatasetFileError, match=r"fullMin256: image folder not found \(the dafb variant"):
        prepare_dataset("dafb", tmp_path, check_counts=False)
    with pytest.raises(DatasetFileError, match=r"classid_classname.csv: file not found"):
        (tmp_path / "labels" / "classid_classname.csv").unlink()
        prepare_dataset("dafre_faces", tmp_path, check_counts=False)
