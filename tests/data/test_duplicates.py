"""A split that lists one image twice would train on it (and score it) twice: the readers refuse it
as `fgir data check` does, naming the lines of both rows."""

import pytest
from PIL import Image

from fgir.config import DataConfig
from fgir.data import DatasetFileError, build_dataset, read_label_file, read_split_csv


def test_split_csv_refuses_a_path_listed_twice_naming_both_lines(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("class_id,dir\n0,a/1.jpg\n1,b/1.jpg\n1,./a/1.jpg\n")
    with pytest.raises(DatasetFileError, match=r"train\.csv:4: duplicate row: '\./a/1\.jpg' is already listed on line 2$"):
        read_split_csv(path)


def test_label_file_refuses_a_path_listed_twice_naming_both_lines(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("0,x/1.png\n\n1,x/2.png\n0,x/1.png\n")
    with pytest.raises(DatasetFileError, match=r"labels\.csv:4: duplicate row: 'x/1\.png' is already listed on line 1$"):
        read_label_file(path)


def test_the_same_file_name_in_two_folders_is_two_images(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("class_id,dir\n0,a/1.jpg\n1,b/1.jpg\n")
    assert read_split_csv(path).paths == ["a/1.jpg", "b/1.jpg"]


def test_a_dataset_with_a_duplicate_row_is_not_built(tmp_path):
    for name in ("1.png", "2.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    (tmp_path / "train.csv").write_text("class_id,dir\n0,1.png\n1,2.png\n0,1.png\n")
    data = DataConfig(format="csv", root=str(tmp_path), num_classes=2, val=None, test=None)
    with pytest.raises(DatasetFileError, match=r"train\.csv:4: duplicate row: '1\.png' is already listed on line 2"):
        build_dataset(data, "train", transform=None)
