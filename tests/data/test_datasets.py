import dataclasses
import os
import random

import numpy as np
import pytest
import torch
from PIL import Image

from fgir.config import ConfigError, DataConfig, SyntheticConfig
from fgir.data.datasets import Batch, ImageListDataset, build_dataset, collate_readable, dataset_info
from fgir.data.images import ImageReadError
from fgir.data.readers import DatasetFileError
from fgir.data.sampler import build_loader
from fgir.data.transforms import build_transform


def save_image(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), (value, value, value)).save(path)


@pytest.fixture
def csv_root(tmp_path):
    """Three classes; train has all of them, test misses class 2."""
    for name, value in [("a/1.png", 10), ("a/2.png", 20), ("b/3.png", 30), ("c/4.png", 40)]:
        save_image(tmp_path / "imgs" / name, value)
    (tmp_path / "train.csv").write_text(
        "class_id,dir,x0,y0,x1,y1\n0,a/1.png,0,0,4,4\n1,b/3.png,1,1,5,5\n2,c/4.png,0,0,9,9\n"
    )
    (tmp_path / "test.csv").write_text("class_id,dir\n0,a/2.png\n1,b/3.png\n")
    (tmp_path / "names.csv").write_text("class_id,class_name\n0,ant\n1,bee\n2,cat\n")
    return tmp_path


def config(root, **overrides) -> DataConfig:
    base = DataConfig(format="csv", root=str(root), image_dir="imgs", class_names="names.csv", val=None)
    return dataclasses.replace(base, **overrides)


def test_csv_dataset_reads_paths_labels_boxes_and_pixels(csv_root):
    train = build_dataset(config(csv_root), "train", transform=None)
    assert train.paths == [str(csv_root / "imgs" / p) for p in ["a/1.png", "b/3.png", "c/4.png"]]
    assert all(os.path.isabs(p) for p in train.paths)
    assert train.labels == [0, 1, 2]
    assert train.class_names == ["ant", "bee", "cat"]
    assert train.num_classes == 3
    torch.testing.assert_close(train.boxes, torch.tensor([[0, 0, 4, 4], [1, 1, 5, 5], [0, 0, 9, 9.0]]))
    image, label = train[1]
    assert label == 1
    assert np.asarray(image)[0, 0].tolist() == [30, 30, 30]


def test_class_count_never_comes_from_one_split(csv_root):
    test = build_dataset(config(csv_root), "test", transform=None)
    assert test.num_classes == 3  # class 2 has no test image
    test = build_dataset(config(csv_root, class_names=None, num_classes=5), "test", transform=None)
    assert test.class_names == ["0", "1", "2", "3", "4"]


def test_unknown_class_count_asks_for_num_classes_or_class_names(csv_root):
    with pytest.raises(ConfigError, match="set data.num_classes or data.class_names"):
        build_dataset(config(csv_root, class_names=None), "train", transform=None)


def test_class_count_sources_must_agree(csv_root):
    with pytest.raises(ConfigError, match=r"data.num_classes is 4 but data.class_names .* lists 3 classes"):
        dataset_info(config(csv_root, num_classes=4))
    assert dataset_info(config(csv_root, num_classes=3)) == (3, ["ant", "bee", "cat"])


def test_missing_class_names_file_names_the_key(csv_root):
    with pytest.raises(ConfigError, match=r"data\.class_names: file not found: .*absent\.csv"):
        dataset_info(config(csv_root, class_names="absent.csv"))


def test_label_beyond_class_count_names_file_and_line(csv_root):
    with pytest.raises(DatasetFileError, match=r"train\.csv:4: class_id must be >= 0, < 2"):
        build_dataset(config(csv_root, class_names=None, num_classes=2), "train", transform=None)


def test_dataset_info_does_not_read_splits(csv_root):
    (csv_root / "train.csv").unlink()
    assert dataset_info(config(csv_root)) == (3, ["ant", "bee", "cat"])


def test_unset_and_missing_splits_name_the_key(csv_root):
    with pytest.raises(ConfigError, match=r"data\.val is not set"):
        build_dataset(config(csv_root), "val", transform=None)
    with pytest.raises(ConfigError, match=r"data\.test: split file or folder not found: .*nope\.csv"):
        build_dataset(config(csv_root, test="nope.csv"), "test", transform=None)
    with pytest.raises(ValueError, match="split must be one of train, val, test"):
        build_dataset(config(csv_root), "holdout", transform=None)


def test_missing_image_fails_when_read_with_its_path(csv_root):
    (csv_root / "test.csv").write_text("class_id,dir\n0,a/gone.png\n")
    dataset = build_dataset(config(csv_root), "test", transform=None)  # not checked here
    with pytest.raises(ImageReadError, match=r"imgs/a/gone\.png: file not found"):
        dataset[0]


def test_labels_format_is_headerless(csv_root):
    (csv_root / "train.txt").write_text("2,c/4.png\n0,a/1.png\n")
    dataset = build_dataset(config(csv_root, format="labels", train="train.txt"), "train", transform=None)
    assert dataset.labels == [2, 0]
    assert dataset.paths[0] == str(csv_root / "imgs" / "c/4.png")
    assert dataset.boxes is None


def test_folder_format_keeps_train_ids_for_other_splits(tmp_path):
    for name in ["train/apple/1.png", "train/pear/2.png", "train/plum/3.jpg", "test/plum/4.png"]:
        save_image(tmp_path / name, 0)
    data = DataConfig(format="folder", root=str(tmp_path), train="train", val=None, test="test")
    assert dataset_info(data) == (3, ["apple", "pear", "plum"])
    test = build_dataset(data, "test", transform=None)
    assert test.labels == [2]
    assert test.paths == [str(tmp_path / "test" / "plum" / "4.png")]
    with pytest.raises(ConfigError, match="data.num_classes is 2 but the class folders of data.train"):
        dataset_info(dataclasses.replace(data, num_classes=2))


def test_synthetic_format_generates_and_reads(tmp_path):
    synthetic = SyntheticConfig(
        num_classes=3, train_per_class=2, val_per_class=1, test_per_class=1, image_size=32
    )
    data = DataConfig(root=str(tmp_path / "syn"), synthetic=synthetic)
    train = build_dataset(data, "train", transform=None)
    assert len(train) == 6
    assert train.num_classes == 3
    assert train.boxes.shape == (6, 4)
    assert train[0][0].size == (32, 32)
    assert dataset_info(data) == (3, train.class_names)


def test_seeded_items_are_reproducible_and_leave_global_rng_alone(csv_root):
    data = config(csv_root, image_size=8, resize_ratio=1.5, augment="medium")
    dataset = build_dataset(data, "train", build_transform(data, train=True))
    torch.manual_seed(123)
    random.seed(123)
    first = dataset[(0, 42)][0]
    after_torch, after_python = torch.rand(3), random.random()
    torch.manual_seed(123)
    random.seed(123)
    torch.testing.assert_close(after_torch, torch.rand(3))  # the seeded call did not consume the stream
    assert after_python == random.random()
    torch.testing.assert_close(dataset[(0, 42)][0], first, rtol=0, atol=0)
    others = [dataset[(0, seed)][0] for seed in range(1, 6)]
    assert any(not torch.equal(first, other) for other in others)


def test_dataset_validates_lengths():
    with pytest.raises(ValueError, match="got 2 paths but 1 labels"):
        ImageListDataset(["/a", "/b"], [0], ["x"])
    with pytest.raises(ValueError, match=r"boxes must have shape \(1, 4\), got \(1, 3\)"):
        ImageListDataset(["/a"], [0], ["x"], boxes=np.zeros((1, 3)))


@pytest.mark.parametrize("workers", [0, 2])
def test_with_on_error_skip_unreadable_images_leave_the_batch_and_are_named(csv_root, workers):
    (csv_root / "imgs" / "b" / "3.png").write_bytes(b"")  # zero bytes
    (csv_root / "train.csv").write_text("class_id,dir\n0,a/1.png\n1,b/3.png\n2,c/4.png\n0,a/gone.png\n")
    transform = build_transform(DataConfig(image_size=8, resize_ratio=1.0), train=False)
    dataset = build_dataset(config(csv_root, on_error="skip"), "train", transform)
    loader = build_loader(dataset, batch_size=4, train=False, seed=0, num_workers=workers)  # collate_readable
    (batch,) = list(loader)
    assert isinstance(batch, Batch) and batch.kept.tolist() == [True, False, True, False]
    assert batch.labels.tolist() == [0, 2] and batch.images.shape == (2, 3, 8, 8)
    assert [s.path for s in batch.skipped] == [dataset.paths[1], dataset.paths[3]]
    assert "file is empty (0 bytes)" in batch.skipped[0].message and "file not found" in batch.skipped[1].message
    # The default fails with the path; an all-unreadable batch is empty, not an error.
    with pytest.raises(ImageReadError, match=r"imgs/b/3\.png: file is empty"):
        build_dataset(config(csv_root), "train", transform)[1]
    empty = collate_readable([dataset[1], dataset[3]])
    assert empty.images.shape == (0,) and empty.labels.shape == (0,) and len(empty.skipped) == 2
    with pytest.raises(ValueError, match="on_error must be 'fail' or 'skip'"):
        ImageListDataset(["/a"], [0], ["x"], on_error="ignore")
