"""The preflight in `train` and `eval`: an unreadable image that a run would meet only late (here
a test image, read after the last epoch) stops it before any work; data.preflight=off restores the
late failure."""

import io

import pytest
from PIL import Image

from conftest import tiny_overrides
from fgir.config import load_config
from fgir.data.datasets import build_dataset
from fgir.data.images import ImageReadError
from fgir.data.preflight import PreflightError
from fgir.data.synthetic import ensure_synthetic
from fgir.engine.trainer import train
from fgir.tools.scoring import score_split


def truncate_first(config, split: str) -> str:
    """The split's first image replaced by a JPEG cut in half (its header still opens); its path."""
    ensure_synthetic(config.data)
    path = build_dataset(config.data, split, None).paths[0]
    buffer = io.BytesIO()
    Image.open(path).convert("RGB").save(buffer, "JPEG")
    with open(path, "wb") as handle:  # a PNG name with JPEG bytes: Pillow goes by the content
        handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def test_train_stops_before_its_first_epoch_on_a_bad_test_image(tmp_path):
    config = load_config(None, tiny_overrides(tmp_path, "train.run_name=r", "train.epochs=1"))
    bad = truncate_first(config, "test")
    with pytest.raises(PreflightError, match=rf"^cannot read image {bad}: .*[Tt]runcated"):
        train(config, progress=False)
    assert not (tmp_path / "runs" / "r" / "checkpoints").exists()  # no epoch ran


def test_with_preflight_off_the_bad_test_image_stops_the_run_after_training(tmp_path):
    config = load_config(None, tiny_overrides(tmp_path, "train.run_name=r", "train.epochs=1", "data.preflight=off"))
    bad = truncate_first(config, "test")
    with pytest.raises(ImageReadError, match=rf"cannot read image {bad}"):
        train(config, progress=False)
    assert (tmp_path / "runs" / "r" / "checkpoints" / "last.safetensors").is_file()


def test_eval_checks_the_split_before_scoring(tmp_path, capsys):
    config = load_config(None, tiny_overrides(tmp_path, "train.run_name=r", "train.epochs=1", "data.val=null"))
    run = train(config, progress=False).run_dir
    bad = truncate_first(config, "test")
    with pytest.raises(PreflightError, match=rf"^cannot read image {bad}: "):
        score_split(run, "test", device="cpu", progress=False)
    scored = score_split(run, "test", data_overrides=["data.on_error=skip"], device="cpu", progress=False)
    assert len(scored.skipped) == 1 and len(scored.paths) == 8
    assert f"warning: cannot read image {bad}: " in capsys.readouterr().err
