"""A warm-up longer than the run is refused before anything is written (the lr would never reach
train.lr); one that takes more than a fifth of the run gets a one-line warning.

The tiny run has 4 optimizer steps per epoch (18 training images, batch 4, partial batch dropped)."""

from pathlib import Path

import pytest

from conftest import tiny_overrides
from fgir.cli import main
from fgir.config import ConfigError
from fgir.engine.trainer import train


def test_a_warmup_longer_than_the_run_is_refused_with_both_numbers_and_the_fix(tiny_config):
    config = tiny_config("train.epochs=5", "train.warmup_steps=500", "train.run_name=r")
    with pytest.raises(ConfigError, match=r"train.warmup_steps=500 is longer than the whole run, 20 optimizer steps "
                                          r"\(5 epochs x 4\): the lr would peak at 0.00038 instead of train.lr=0.01; "
                                          r"use e.g. train.warmup_steps=2, or more train.epochs"):
        train(config, progress=False)
    assert not (Path(config.train.output_dir) / "r").exists()


def test_the_cli_answers_a_too_long_warmup_with_one_line_and_status_2(tmp_path, capsys):
    assert main(["train", *tiny_overrides(tmp_path, "train.warmup_steps=9"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fgir train: error: train.warmup_steps=9 is longer than the whole run, 8 optimizer steps (2 epochs "
                   "x 4): the lr would peak at 0.0078 instead of train.lr=0.01; use e.g. train.warmup_steps=1, or "
                   "more train.epochs"]
    assert not (tmp_path / "runs").exists()


def test_a_warmup_over_a_fifth_of_the_run_is_warned_about_in_one_line(tiny_config, capsys):
    train(tiny_config("train.warmup_steps=3", "train.run_name=long", "train.epochs=1"), progress=False)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warm-up" in line]
    assert warnings == ["warning: the warm-up (train.warmup_steps=3) takes 75% of the run's 4 optimizer steps"]
    train(tiny_config("train.warmup_steps=1", "train.run_name=short"), progress=False)  # 1 of 8 steps
    assert "warm-up" not in capsys.readouterr().err


def test_a_training_split_smaller_than_one_batch_is_refused(tiny_config):
    with pytest.raises(ConfigError, match=r"the training split has 18 images, fewer than one batch of "
                                          r"data.batch_size=32 .*use a smaller data.batch_size"):
        train(tiny_config("data.batch_size=32", "train.run_name=r"), progress=False)
