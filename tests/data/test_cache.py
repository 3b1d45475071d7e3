import os

import pytest
import yaml
from PIL import Image

from fgir.config import ConfigError, DataConfig, load_config
from fgir.data import build_dataset
from fgir.data.cache import cache_dataset


def make_csv_dataset(root, sizes=((400, 300), (320, 640), (30, 20))):
    """Three JPEGs of class 0/1/0 listed in train.csv and test.csv (one PNG too)."""
    (root / "images" / "a").mkdir(parents=True)
    rows = []
    for i, size in enumerate(sizes):
        name = f"a/{i}.jpg" if i < 2 else f"a/{i}.png"
        Image.new("RGB", size, (40 * i, 100, 200)).save(root / "images" / name)
        rows.append(f"{i % 2},{name}")
    for split in ("train", "test"):
        (root / f"{split}.csv").write_text("class_id,dir\n" + "\n".join(rows) + "\n")
    return DataConfig(name="mini", format="csv", root=str(root), image_dir="images", val=None, num_classes=2,
                      image_size=32, resize_ratio=1.25)


def test_cache_shrinks_to_the_resize_size_and_keeps_labels(tmp_path):
    data = make_csv_dataset(tmp_path / "src")
    result = cache_dataset(data, tmp_path / "cache", workers=1, progress=False)
    assert (result.written, result.up_to_date, result.failed) == (3, 0, [])
    # Short side -> resize_size = round(1.25 * 32) = 40; images already smaller stay as they are.
    sizes = [Image.open(tmp_path / "cache" / "images" / "a" / name).size for name in ("0.jpg", "1.jpg", "2.png")]
    assert sizes == [(53, 40), (40, 80), (30, 20)]
    assert Image.open(tmp_path / "cache" / "images" / "a" / "2.png").format == "PNG"

    cached = load_config(result.config_path).data
    original, copy = build_dataset(data, "train", None), build_dataset(cached, "train", None)
    assert copy.labels == original.labels
    assert all(path.startswith(str(tmp_path / "cache")) for path in copy.paths)


def test_cache_continues_where_it_stopped_and_reports_bad_images(tmp_path):
    data = make_csv_dataset(tmp_path / "src")
    cache_dataset(data, tmp_path / "cache", workers=1, progress=False)
    (tmp_path / "cache" / "images" / "a" / "1.jpg").unlink()  # as if interrupted before this one
    broken = tmp_path / "src" / "images" / "a" / "0.jpg"
    broken.write_bytes(b"not a jpeg")
    os.utime(broken, (1e10, 1e10))  # newer than its cached copy: must be redone
    result = cache_dataset(data, tmp_path / "cache", workers=1, progress=False)
    assert (result.written, result.up_to_date) == (1, 1)
    assert len(result.failed) == 1 and str(broken) in result.failed[0]
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.name.endswith(".tmp")]


def test_folder_datasets_are_mirrored_per_split(tmp_path):
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            (tmp_path / "src" / split / name).mkdir(parents=True)
            Image.new("RGB", (200, 100)).save(tmp_path / "src" / split / name / "x.jpg")
    data = DataConfig(name="pets", format="folder", root=str(tmp_path / "src"), train="train", val=None,
                      test="test", image_size=32, resize_ratio=1.25)
    result = cache_dataset(data, tmp_path / "cache", workers=1, progress=False)
    cached = yaml.safe_load(result.config_path.read_text())["data"]
    dataset = build_dataset(DataConfig(**{**data.__dict__, **{"root": cached["root"]}}), "test", None)
    assert dataset.class_names == ["cat", "dog"]
    assert {Image.open(p).size for p in dataset.paths} == {(80, 40)}


def test_synthetic_data_is_refused():
    with pytest.raises(ConfigError, match="nothing to cache"):
        cache_dataset(DataConfig(), "unused")
