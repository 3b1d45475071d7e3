"""data.format=hf: a Hugging Face dataset saved with save_to_disk is read with its class names, its
stored image bytes, and the same check / skip / training path as a CSV dataset."""

import io
import os

import datasets
import numpy as np
import pytest
from PIL import Image

from conftest import tiny_overrides
from fgir import cli
from fgir.config import load_config
from fgir.data import build_dataset
from fgir.data.datasets import dataset_info

NAMES = ["albatross", "bunting", "crow"]
datasets.disable_progress_bars()  # save_to_disk's bars would mix into the CLI output the tests read


def png_bytes(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def save_dataset(root, broken_row: int | None = None, class_label: bool = True):
    features = datasets.Features({"picture": datasets.Image(),
                                  "species": datasets.ClassLabel(names=NAMES) if class_label else datasets.Value("int64")})
    splits = {}
    for split, count, offset in (("train", 12, 0), ("validation", 6, 100), ("test", 6, 200)):
        images = [{"bytes": png_bytes(offset + i), "path": None} for i in range(count)]
        if split == "train" and broken_row is not None:
            images[broken_row] = {"bytes": b"not an image at all", "path": None}
        splits[split] = datasets.Dataset.from_dict({"picture": images, "species": [i % 3 for i in range(count)]},
                                                   features=features)
    datasets.DatasetDict(splits).save_to_disk(str(root))
    return splits


def hf_overrides(tmp_path, *extra):
    return tiny_overrides(tmp_path, "data.format=hf", f"data.root={tmp_path / 'cub_hf'}", "data.train=train",
                          "data.val=validation", "data.test=test", "data.hf.image_column=picture",
                          "data.hf.label_column=species", f"data.hf.export_dir={tmp_path / 'export'}", *extra)


def test_splits_read_with_class_names_labels_and_the_stored_bytes(tmp_path):
    save_dataset(tmp_path / "cub_hf")
    data = load_config(None, hf_overrides(tmp_path)).data
    assert dataset_info(data) == (3, NAMES)
    test = build_dataset(data, "test", transform=None)
    assert len(test) == 6 and test.labels == [0, 1, 2, 0, 1, 2]
    for i, path in enumerate(test.paths):
        assert open(path, "rb").read() == png_bytes(200 + i)  # the dataset's bytes, not re-encoded
        image, label = test[i]
        assert np.array_equal(np.asarray(image), np.asarray(Image.open(io.BytesIO(png_bytes(200 + i)))))

    mtimes = {path: os.stat(path).st_mtime_ns for path in test.paths}
    again = build_dataset(data, "test", transform=None)  # the exported copy is reused, not rewritten
    assert {path: os.stat(path).st_mtime_ns for path in again.paths} == mtimes
    assert [p.name for p in (tmp_path / "export").iterdir() if p.name.startswith(".")] == []  # no staging left


def test_train_eval_and_check_run_on_a_hf_dataset(tmp_path, capsys):
    save_dataset(tmp_path / "cub_hf")
    assert cli.main(["train", *hf_overrides(tmp_path), "--no-progress"]) == 0
    assert "test top-1" in capsys.readouterr().out
    assert cli.main(["data", "check", *hf_overrides(tmp_path), "--no-progress"]) == 0


def test_a_broken_image_is_named_by_check_and_counted_as_skipped_in_training(tmp_path, capsys):
    save_dataset(tmp_path / "cub_hf", broken_row=4)
    assert cli.main(["data", "check", *hf_overrides(tmp_path), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "train/00000004.bin" in out
    assert cli.main(["train", *hf_overrides(tmp_path, "data.on_error=skip", "data.preflight=off"),
                     "--no-progress"]) == 0
    assert "1 unreadable training images skipped" in capsys.readouterr().out


@pytest.mark.parametrize("override, message", [
    ("data.test=testing", "data.test=testing: no such split in"),
    ("data.hf.label_column=label", "data.hf.label_column=label: split 'train' of"),
])
def test_a_missing_split_or_column_is_one_line_naming_the_key_and_what_exists(tmp_path, capsys, override, message):
    save_dataset(tmp_path / "cub_hf")
    assert cli.main(["train", *hf_overrides(tmp_path, override), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and ("(it has: train, validation, test)" in err or "columns: picture, species" in err)
    assert len([line for line in err.splitlines() if not line.startswith("warning")]) == 1


def test_an_integer_label_column_needs_the_class_count(tmp_path, capsys):
    save_dataset(tmp_path / "cub_hf", class_label=False)
    assert cli.main(["data", "check", *hf_overrides(tmp_path), "--no-progress"]) == 2
    assert "is not a ClassLabel feature" in capsys.readouterr().err
    data = load_config(None, hf_overrides(tmp_path, "data.num_classes=3")).data
    assert dataset_info(data) == (3, ["0", "1", "2"])


def test_a_process_loads_each_dataset_once(tmp_path, monkeypatch):
    from fgir.data import hf_datasets

    loads = []
    real = hf_datasets.load_splits
    monkeypatch.setattr(hf_datasets, "load_splits", lambda data: loads.append(data.root) or real(data))
    save_dataset(tmp_path / "cub_hf")
    data = load_config(None, hf_overrides(tmp_path)).data
    first = build_dataset(data, "train", transform=None)
    assert dataset_info(data) == (3, NAMES) and len(build_dataset(data, "test", transform=None)) == 6
    assert len(loads) == 1
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(
        {"picture": [{"bytes": png_bytes(500 + i), "path": None} for i in range(3)], "species": [0, 1, 2]},
        features=datasets.Features({"picture": datasets.Image(), "species": datasets.ClassLabel(names=NAMES)})),
        "validation": datasets.load_from_disk(str(tmp_path / "cub_hf"))["validation"],
        "test": datasets.load_from_disk(str(tmp_path / "cub_hf"))["test"]}).save_to_disk(str(tmp_path / "cub_hf2"))
    data2 = load_config(None, hf_overrides(tmp_path, f"data.root={tmp_path / 'cub_hf2'}")).data
    assert len(build_dataset(data2, "train", transform=None)) == 3 and len(loads) == 2
    assert len(build_dataset(data, "train", transform=None)) == len(first) and len(loads) == 2
