"""One pixel limit, `data.max_image_pixels`, for every path that reads images: refused before
decoding with an error naming the file, its size, the limit and the key; a counted skip under
data.on_error=skip."""

import pytest
from PIL import Image

from fgir.config import ConfigError, DataConfig, load_config
from fgir.data import ImageReadError, build_dataset, read_image
from fgir.data.check import check_dataset
from fgir.data.datasets import UnreadableImage


@pytest.fixture(scope="module")
def large_png(tmp_path_factory):
    """7000 x 7000 (49 MP, over the default 40 MP) in one colour: a few hundred kB on disk."""
    path = tmp_path_factory.mktemp("large") / "large.png"
    Image.new("RGB", (7000, 7000), (20, 120, 40)).save(path)
    return path


def test_a_large_png_is_refused_by_default_before_it_is_decoded(large_png, tmp_path):
    over = r"7000 x 7000 = 49\.0 megapixels, over the limit of 40 megapixels \(data\.max_image_pixels=40000000; raise it"
    with pytest.raises(ImageReadError, match=rf"^cannot read image {large_png}: {over}"):
        read_image(large_png)
    # Cut short, it would fail to decode: the size check comes first.
    cut = tmp_path / "cut.png"
    cut.write_bytes(large_png.read_bytes()[:2000])
    with pytest.raises(ImageReadError, match=over):
        read_image(cut)


@pytest.fixture
def small_dataset(tmp_path):
    Image.new("RGB", (100, 80)).save(tmp_path / "wide.png")  # 8000 pixels
    Image.new("RGB", (10, 10)).save(tmp_path / "small.png")
    (tmp_path / "train.csv").write_text("class_id,dir\n0,wide.png\n1,small.png\n")
    return tmp_path


def data_config(root, **changes):
    return DataConfig(format="csv", root=str(root), num_classes=2, val=None, test=None, **changes)


def test_training_and_evaluation_datasets_apply_the_key(small_dataset):
    dataset = build_dataset(data_config(small_dataset, max_image_pixels=7999), "train", transform=None)
    with pytest.raises(ImageReadError, match=r"wide\.png: 100 x 80 = 0\.0 megapixels, over the limit of 0\.007999 "
                                             r"megapixels \(data\.max_image_pixels=7999;"):
        dataset[0]
    assert dataset[1][0].size == (10, 10)
    assert build_dataset(data_config(small_dataset, max_image_pixels=8000), "train", transform=None)[0][0].size == (100, 80)


def test_under_on_error_skip_an_image_over_the_limit_is_a_skip(small_dataset):
    dataset = build_dataset(data_config(small_dataset, max_image_pixels=7999, on_error="skip"), "train", transform=None)
    skipped = dataset[0]
    assert isinstance(skipped, UnreadableImage) and "data.max_image_pixels=7999" in skipped.message


def test_data_check_reports_the_image_over_the_limit_at_its_row(small_dataset):
    report = check_dataset(data_config(small_dataset, max_image_pixels=7999), progress=False)
    assert [(p.line, p.severity) for p in report.problems] == [(2, "error")]
    assert "over the limit of 0.007999 megapixels" in report.problems[0].message


def test_the_limit_must_be_positive():
    assert load_config(None, []).data.max_image_pixels == 40_000_000
    with pytest.raises(ConfigError, match=r"'data\.max_image_pixels' must be > 0, got 0"):
        load_config(None, ["data.max_image_pixels=0"])
