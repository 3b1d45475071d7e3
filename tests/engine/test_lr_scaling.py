"""train.lr_base_batch: the linear rule for changing a recipe's batch size, applied once."""

import pytest
import yaml

from fgir.config import load_config
from fgir.engine.optim import with_batch_scaled_lr
from fgir.engine.trainer import train


def test_off_by_default_and_linear_when_set_and_idempotent():
    config = load_config(None, ["data.batch_size=32", "train.lr=0.01"])
    assert with_batch_scaled_lr(config) == (config, None)  # the paper recipes: the lr as given
    scaled, note = with_batch_scaled_lr(load_config(None, ["data.batch_size=32", "train.lr=0.01",
                                                           "train.lr_base_batch=8"]))
    assert scaled.train.lr == pytest.approx(0.04) and scaled.train.lr_base_batch == 32
    assert note == "train.lr 0.01 tuned for batch 8 (train.lr_base_batch) -> 0.04 for data.batch_size=32"
    assert with_batch_scaled_lr(scaled) == (scaled, None)  # a saved run config is not scaled twice
    assert scaled.train.warmup_lr == config.train.warmup_lr and scaled.train.min_lr == config.train.min_lr


def test_a_run_trains_and_saves_the_scaled_lr(tiny_config, capsys):
    result = train(tiny_config("train.lr_base_batch=2", "train.run_name=r"), progress=False)  # batch 4
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())["train"]
    assert saved["lr"] == pytest.approx(0.02) and saved["lr_base_batch"] == 4
    assert "-> 0.02 for data.batch_size=4" in capsys.readouterr().out


def test_a_base_batch_below_one_is_refused():
    with pytest.raises(ValueError, match="train.lr_base_batch' must be >= 1 or null, got 0"):
        load_config(None, ["train.lr_base_batch=0"])
