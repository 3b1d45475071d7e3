"""Leakage between splits in `fgir data check`: the same image (its path under the image folder) in
two splits, or two splits that name the same file, is reported as a warning."""

from PIL import Image

from fgir.config import DataConfig
from fgir.data.check import check_dataset


def dataset(root):
    for relative in ("a/1.png", "b/1.png", "a/2.png", "b/2.png"):
        (root / "images" / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(root / "images" / relative)
    (root / "train.csv").write_text("class_id,dir\n0,a/1.png\n1,a/2.png\n")
    (root / "val.csv").write_text("class_id,dir\n0,b/2.png\n")
    (root / "test.csv").write_text("class_id,dir\n0,b/1.png\n1,./a/2.png\n")
    return DataConfig(format="csv", root=str(root), image_dir="images", num_classes=2)


def warnings(report):
    return [(p.file.rsplit("/", 1)[-1], p.line, p.message) for p in report.problems if p.severity == "warning"]


def test_leakage_compares_paths_under_the_image_folder(tmp_path):
    report = check_dataset(dataset(tmp_path), progress=False)
    # b/1.png is not a/1.png although both are called 1.png; ./a/2.png is a/2.png.
    assert warnings(report) == [("test.csv", 3, f"image {tmp_path / 'images/a/2.png'} is also listed in "
                                                f"{tmp_path / 'train.csv'}:3")]
    assert report.ok


def test_two_splits_naming_one_file_get_one_warning_and_are_scanned_once(tmp_path):
    data = dataset(tmp_path)
    data.val = "./test.csv"
    report = check_dataset(data, progress=False)
    assert warnings(report) == [
        ("test.csv", None, "data.val and data.test both name this file: the checkpoint is chosen on test images, "
                           "which inflates the test score"),
        ("test.csv", 3, f"image {tmp_path / 'images/a/2.png'} is also listed in {tmp_path / 'train.csv'}:3"),
    ]
    assert report.counts == {"train": 2, "val": 2, "test": 2}


def test_train_named_as_the_test_split_warns_that_test_scores_trained_images(tmp_path):
    data = dataset(tmp_path)
    data.test = "train.csv"
    messages = [message for _, line, message in warnings(check_dataset(data, progress=False)) if line is None]
    assert messages == ["data.train and data.test both name this file: the test score counts images the model "
                        "trained on"]
