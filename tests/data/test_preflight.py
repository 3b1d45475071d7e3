"""data.preflight: every listed image is opened cheaply before any work, so a bad file stops a run
at its start (data.on_error=fail) or is counted (skip), not met hours in."""

import io

import numpy as np
import pytest
from PIL import Image

from fgir.config import DataConfig, load_config
from fgir.data import preflight as preflight_module
from fgir.data.preflight import PreflightError, image_problem, preflight


def jpeg_bytes(size=(64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
        buffer, "JPEG")
    return buffer.getvalue()


def test_a_truncated_jpeg_whose_header_opens_is_found(tmp_path):
    whole = jpeg_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole[: len(whole) * 2 // 3])
    with Image.open(cut) as image:
        assert image.size == (64, 48)  # the header alone looks fine
    assert "cannot read image" in image_problem(str(cut), 40_000_000)
    assert "truncated" in image_problem(str(cut), 40_000_000)


def test_whole_files_pass_and_data_after_the_picture_is_not_a_fault(tmp_path):
    (tmp_path / "whole.jpg").write_bytes(jpeg_bytes())
    (tmp_path / "motion.jpg").write_bytes(jpeg_bytes() + b"\0\0ftypmp42" + bytes(500))  # a motion photo's video
    Image.new("RGB", (9, 9)).save(tmp_path / "whole.png")
    Image.new("RGB", (9, 9)).save(tmp_path / "whole.webp")
    for name in ("whole.jpg", "motion.jpg", "whole.png", "whole.webp"):
        assert image_problem(str(tmp_path / name), 40_000_000) is None, name


def test_broken_files_get_the_loaders_message(tmp_path):
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 50, 3), dtype=np.uint8)).save(png, "PNG")
    (tmp_path / "cut.png").write_bytes(png.getvalue()[:-300])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.png").write_text("not a picture")
    Image.new("RGB", (100, 80)).save(tmp_path / "large.png")
    problems = {name: image_problem(str(tmp_path / name), 7999)
                for name in ("cut.png", "empty.jpg", "notes.png", "large.png", "missing.jpg")}
    assert all(problem.startswith(f"cannot read image {tmp_path / name}: ") for name, problem in problems.items())
    assert "file is empty (0 bytes)" in problems["empty.jpg"]
    assert "file not found" in problems["missing.jpg"]
    assert "100 x 80 = 0.0 megapixels, over the limit of 0.007999 megapixels" in problems["large.png"]
    assert "cannot identify image file" in problems["notes.png"]


@pytest.fixture
def dataset(tmp_path):
    """Train: 7 images, 3 of them unreadable; test: 2 of the readable ones."""
    (tmp_path / "good.jpg").write_bytes(jpeg_bytes())
    lines = ["class_id,dir", "0,good.jpg"]
    for i in range(6):
        whole = jpeg_bytes()
        (tmp_path / f"{i}.jpg").write_bytes(whole if i % 2 else whole[: len(whole) // 2])
        lines.append(f"{i % 2},{i}.jpg")
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "test.csv").write_text("class_id,dir\n0,good.jpg\n1,1.jpg\n")
    return DataConfig(format="csv", root=str(tmp_path), num_classes=2, val=None)


def test_under_fail_one_error_names_the_bad_files_and_counts_them(dataset, monkeypatch):
    monkeypatch.setattr(preflight_module, "SHOWN", 2)
    with pytest.raises(PreflightError) as caught:
        preflight(dataset, progress=False)
    lines = str(caught.value).splitlines()
    root = dataset.root
    assert lines[0] == ("3 of 7 listed images cannot be read (found by data.preflight=auto before starting; "
                        "data.on_error=skip leaves such images out):")
    assert lines[1].startswith(f"  cannot read image {root}/0.jpg: ") and lines[2].startswith(f"  cannot read image {root}/2.jpg: ")
    assert lines[3:] == ["  ... and 1 more"]


def test_one_bad_image_is_one_line_with_the_loaders_message(dataset, tmp_path):
    for name in ("0.jpg", "2.jpg"):
        (tmp_path / name).write_bytes(jpeg_bytes())
    with pytest.raises(PreflightError) as caught:
        preflight(dataset, progress=False)
    assert str(caught.value).startswith(f"cannot read image {tmp_path}/4.jpg: ")
    assert str(caught.value).endswith(" (found by data.preflight=auto before starting; data.on_error=skip leaves "
                                      "such images out)")
    assert len(str(caught.value).splitlines()) == 1


def test_under_skip_the_count_is_reported_and_nothing_raised(dataset, capsys):
    dataset.on_error = "skip"
    result = preflight(dataset, progress=False)
    assert result.checked == 7 and len(result.problems) == 3
    err = capsys.readouterr().err
    assert "warning: 3 of 7 listed images cannot be read (data.on_error=skip leaves them out):\n  cannot read" in err


def test_splits_sharing_images_are_warned_about(dataset, capsys):
    dataset.on_error = "skip"
    result = preflight(dataset, progress=False)
    expected = (f"data.train and data.test share 2 images (e.g. {dataset.root}/1.jpg): the test score counts images "
                "the model trained on (`fgir data check` lists them)")
    assert result.warnings == [expected]
    assert f"warning: {expected}" in capsys.readouterr().err


def test_auto_checks_below_the_limit_on_always_off_never(dataset, monkeypatch):
    dataset.on_error = "skip"
    assert preflight(dataset, progress=False, echo=False).checked == 7
    monkeypatch.setattr(preflight_module, "AUTO_LIMIT", 7)  # the splits list 7 images: not fewer
    assert preflight(dataset, progress=False, echo=False).checked == 0
    dataset.preflight = "on"
    assert preflight(dataset, progress=False, echo=False).checked == 7
    dataset.preflight = "off"
    monkeypatch.setattr(preflight_module, "AUTO_LIMIT", 10**9)
    assert preflight(dataset, progress=False, echo=False).checked == 0


def test_the_key_reads_yaml_booleans_as_on_and_off():
    assert load_config(None, []).data.preflight == "auto"
    assert [load_config(None, [f"data.preflight={v}"]).data.preflight for v in ("on", "off", "true", "auto")] == [
        "on", "off", "on", "auto"]
