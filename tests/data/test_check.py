import json

import pytest
from PIL import Image

from fgir.config import DataConfig, SyntheticConfig
from fgir.data.check import Problem, check_dataset


def image(path, colour=(200, 30, 30), suffix_format="PNG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path, suffix_format)
    return path


def found(report):
    """(file name, line, severity) of every problem, with its message."""
    return {(p.file.rsplit("/", 1)[-1], p.line, p.severity): p.message for p in report.problems}


@pytest.fixture
def bad_csv_root(tmp_path):
    images = tmp_path / "imgs" / "a"
    for name in ("good0.png", "good1.png", "good2.png"):
        image(images / name)
    (images / "zero.jpg").write_bytes(b"")
    jpeg = image(images / "full.jpg", suffix_format="JPEG").read_bytes()
    (images / "trunc.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (images / "notimg.png").write_text("not an image\n")
    (tmp_path / "secret.png").write_bytes(image(tmp_path / "x" / "s.png").read_bytes())
    (tmp_path / "names.csv").write_text("class_id,class_name\n0,a\n1,b\n2,c\n")
    (tmp_path / "train.csv").write_text(
        "class_id,dir\n"  # 1
        "0,a/good0.png\n"  # 2
        "1,a/good1.png,extra\n"  # 3 wrong column count
        "x,a/good1.png\n"  # 4 non-integer label
        "3,a/good1.png\n"  # 5 label out of range
        "0,/etc/passwd\n"  # 6 absolute path
        "0,../secret.png\n"  # 7 escapes the image root
        "0,a/good0.png\n"  # 8 duplicate of line 2
        "1,a/missing.png\n"  # 9 missing
        "\n"  # 10 blank lines are fine
        "1,a/zero.jpg\n"  # 11 zero bytes
        "2,a/trunc.jpg\n"  # 12 truncated
        "2,a/notimg.png\n"  # 13 not an image
        "0,a/good1.png\n"  # 14 fine
    )
    (tmp_path / "val.csv").write_text("class_id,dir\n")
    (tmp_path / "test.csv").write_text("class_id,dir\n2,a/good2.png\n0,a/good1.png\n")
    return tmp_path


def csv_config(root, **changes):
    return DataConfig(format="csv", root=str(root), image_dir="imgs", class_names="names.csv", **changes)


def test_bad_csv_dataset_reports_every_problem_at_its_line(bad_csv_root):
    report = check_dataset(csv_config(bad_csv_root), progress=False)
    problems = found(report)
    expected = {
        ("train.csv", 3, "error"): "expected 2 fields like the header, got 3",
        ("train.csv", 4, "error"): "class_id must be an integer, got 'x'",
        ("train.csv", 5, "error"): "class_id must be >= 0, < 3 (the number of classes), got 3",
        ("train.csv", 6, "error"): "image path must be relative",
        ("train.csv", 7, "error"): "image path must be relative",
        ("train.csv", 8, "error"): "duplicate row: 'a/good0.png' is already listed on line 2",
        ("train.csv", 9, "error"): "file not found",
        ("train.csv", 11, "error"): "file is empty (0 bytes)",
        ("train.csv", 12, "error"): "cannot read image",
        ("train.csv", 13, "error"): "cannot identify image file",
        ("val.csv", None, "error"): "empty split: no rows after the header",
        ("test.csv", 3, "warning"): "train.csv:14",
    }
    assert set(problems) == set(expected)
    for key, fragment in expected.items():
        assert fragment in problems[key], (key, problems[key])
    assert "trunc.jpg" in problems[("train.csv", 12, "error")]
    assert report.counts == {"train": 12, "val": 0, "test": 2}
    assert not report.ok


def test_format_groups_by_file_and_to_dict_is_json(bad_csv_root):
    report = check_dataset(csv_config(bad_csv_root), progress=False)
    text = report.format()
    train = str(bad_csv_root / "train.csv")
    lines = text.splitlines()
    assert lines[0] == f"{train} (10 problems)"
    assert lines[1] == f"  {train}:3: error: expected 2 fields like the header, got 3"
    assert f"  {bad_csv_root / 'test.csv'}:3: warning: image " in text
    assert lines[-1].startswith("FAILED: 11 errors, 1 warning; rows per split: train 12, val 0, test 2")
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is False
    assert {"file": train, "line": 4, "message": "class_id must be an integer, got 'x'", "severity": "error"} in data[
        "problems"
    ]


def test_without_opening_images_only_missing_files_are_reported(bad_csv_root):
    report = check_dataset(csv_config(bad_csv_root, val=None), splits=("train",), open_images=False, progress=False)
    lines = {p.line for p in report.problems}
    assert 9 in lines and not lines & {11, 12, 13}
    assert report.counts == {"train": 12}


def test_labels_format_header_hint_bad_csv_and_class_names(tmp_path):
    image(tmp_path / "a.png")
    image(tmp_path / "b.png")
    (tmp_path / "names.csv").write_text("0,a\n2,c\n")  # id 1 missing
    (tmp_path / "train.txt").write_text("class_id,dir\n0,a.png\n0,a.png,x\n5,b.png\n")
    (tmp_path / "test.txt").write_bytes(b"0,a.png\n0,\xff\xfe.png\n1,b.png\n")
    data = DataConfig(format="labels", root=str(tmp_path), class_names="names.csv", train="train.txt", val=None,
                      test="test.txt")
    problems = found(check_dataset(data, progress=False))
    assert set(problems) == {
        ("names.csv", None, "error"), ("train.txt", 1, "error"), ("train.txt", 3, "error"),
        ("test.txt", 1, "warning"), ("test.txt", 2, "error"), ("test.txt", 3, "warning"),
    }
    assert problems[("names.csv", None, "error")].startswith("class ids must be 0..1 with no gaps; missing 1")
    assert "this format has no header" in problems[("train.txt", 1, "error")]
    assert problems[("train.txt", 3, "error")] == "expected 2 fields class_id,relative_path, got 3"
    assert problems[("test.txt", 2, "error")] == "not valid UTF-8 text"
    # Without a class count only negative labels are errors: line 4 (label 5) passes.


def test_num_classes_disagreeing_with_class_names_is_reported(tmp_path):
    image(tmp_path / "a.png")
    (tmp_path / "names.csv").write_text("0,a\n1,b\n")
    (tmp_path / "train.csv").write_text("class_id,dir\n1,a.png\n")
    data = DataConfig(format="csv", root=str(tmp_path), class_names="names.csv", num_classes=3, val=None, test=None)
    report = check_dataset(data, progress=False)
    assert report.problems == [
        Problem(str(tmp_path / "names.csv"), None,
                f"data.num_classes is 3 but data.class_names ({tmp_path / 'names.csv'}) lists 2 classes")
    ]


def test_folder_format_reports_unknown_classes_bad_images_and_empty_splits(tmp_path):
    image(tmp_path / "train" / "a" / "1.png")
    (tmp_path / "train" / "b").mkdir()
    (tmp_path / "train" / "b" / "2.jpg").write_text("text")
    (tmp_path / "train" / "b" / "notes.txt").write_text("not listed: not an image extension")
    image(tmp_path / "test" / "zebra" / "3.png")
    (tmp_path / "val" / "a").mkdir(parents=True)
    data = DataConfig(format="folder", root=str(tmp_path), train="train", val="val", test="test")
    report = check_dataset(data, progress=False)
    problems = found(report)
    assert set(problems) == {("train", None, "error"), ("val", None, "error"), ("test", None, "error")}
    assert "2.jpg" in problems[("train", None, "error")]
    assert problems[("val", None, "error")].startswith("empty split: no images")
    assert problems[("test", None, "error")] == "class folder(s) zebra are not among the 2 known classes"
    assert report.counts == {"train": 2, "val": 0, "test": 1}


def test_clean_dataset_is_ok(tmp_path):
    for i in range(3):
        image(tmp_path / "imgs" / f"{i}.png", colour=(i, 0, 0))
    (tmp_path / "names.csv").write_text("0,a\n1,b\n")
    (tmp_path / "train.csv").write_text("class_id,dir\n0,0.png\n1,1.png\n")
    (tmp_path / "test.csv").write_text("dir,class_id\n2.png,1\n")
    report = check_dataset(csv_config(tmp_path, val=None), progress=False)
    assert report.problems == [] and report.ok
    assert report.counts == {"train": 2, "test": 1}
    assert report.format() == "ok: 0 errors, 0 warnings; rows per split: train 2, test 1"


def test_synthetic_set_is_clean(tmp_path):
    tiny = SyntheticConfig(num_classes=3, train_per_class=2, val_per_class=1, test_per_class=1, image_size=16)
    report = check_dataset(DataConfig(root=str(tmp_path / "syn"), synthetic=tiny), progress=False)
    assert report.problems == []
    assert report.counts == {"train": 6, "val": 3, "test": 3}
