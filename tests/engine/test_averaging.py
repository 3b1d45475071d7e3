"""Averaging of the best epochs (train.average_top): the mean equals a hand mean of the kept files
(timm's avg_checkpoints arithmetic, integer buffers from the best), exactly N files are kept with
the ranking a person would make, and train.select=average tests (and serves) the mean."""

import json

import pytest
import torch
from torch import nn

from fgir.config import ConfigError, load_config
from fgir.engine import averaging
from fgir.engine.checkpoint import load_checkpoint, resolve_checkpoint_path, save_checkpoint
from fgir.engine.trainer import train

CLASSES = ["a", "b", "c"]


def tiny_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
    net.train()(torch.randn(8, 5))
    for _ in range(seed):  # a different integer counter in every file
        net(torch.randn(8, 5))
    return net


def keep(ckpt_dir, n: int, epoch: int, top1: float, net: nn.Module) -> None:
    """What the trainer does after validating epoch `epoch`."""
    if averaging.enters_top(ckpt_dir, n, top1):
        save_checkpoint(averaging.top_path(ckpt_dir, epoch), net, load_config(None, []), CLASSES, epoch=epoch,
                        global_step=epoch, metrics={"val": {"top1": top1}})
        averaging.prune(ckpt_dir, n)


def test_pruning_keeps_exactly_n_best_and_ties_keep_the_earlier_epoch(tmp_path):
    for epoch, top1 in enumerate([50.0, 70.0, 60.0, 70.0, 40.0, 65.0], start=1):
        keep(tmp_path, 3, epoch, top1, tiny_net(epoch))
        assert len(list((tmp_path / averaging.TOP_DIR).iterdir())) == min(epoch, 3)
    kept = averaging.kept_epochs(tmp_path)
    assert [(k.epoch, k.top1) for k in kept] == [(2, 70.0), (4, 70.0), (6, 65.0)]
    keep(tmp_path, 3, 7, 65.0, tiny_net(7))  # ties the worst kept: the earlier stays
    assert [k.epoch for k in averaging.kept_epochs(tmp_path)] == [2, 4, 6]


def test_the_average_equals_a_hand_mean_of_the_saved_files(tmp_path):
    for epoch, top1 in [(1, 10.0), (2, 30.0), (3, 20.0)]:
        keep(tmp_path, 3, epoch, top1, tiny_net(epoch))
    averaged, kept = averaging.average_kept(tmp_path)
    files = [load_checkpoint(averaging.top_path(tmp_path, e)).model_state for e in (1, 2, 3)]
    assert [k.epoch for k in kept] == [2, 3, 1]
    for key, value in averaged.items():
        if key.endswith("num_batches_tracked"):
            assert torch.equal(value, files[1][key])  # the best epoch's (2) counter, not a mean
            continue
        hand = sum(f[key].double() for f in files) / 3
        assert value.dtype == torch.float32 and torch.equal(value, hand.float())
    assert not torch.equal(averaged["0.weight"], files[1]["0.weight"])


def test_bad_averaging_keys_are_refused_naming_the_key(tiny_config):
    with pytest.raises(ConfigError, match="train.average_top.*>= 0"):
        tiny_config("train.average_top=-1")
    with pytest.raises(ConfigError, match="train.average_top=2.*data.val is null"):
        tiny_config("train.average_top=2", "data.val=null")
    with pytest.raises(ConfigError, match="train.select=average.*train.average_top=0"):
        tiny_config("train.select=average")


def test_select_average_tests_and_serves_the_mean_of_the_kept_epochs(tiny_config):
    result = train(tiny_config("train.epochs=4", "train.average_top=2", "train.select=average", "train.run_name=r"),
                   progress=False)
    ckpt_dir = result.run_dir / "checkpoints"
    rows = json.loads((result.run_dir / "metrics.json").read_text())
    expected = sorted(rows, key=lambda r: (-r["val_top1"], r["epoch"]))[:2]
    kept = averaging.kept_epochs(ckpt_dir)
    assert [k.epoch for k in kept] == [r["epoch"] for r in expected] and len(list((ckpt_dir / "top").iterdir())) == 2
    assert result.checkpoint == ckpt_dir / "averaged.safetensors" == resolve_checkpoint_path(result.run_dir)
    mean = load_checkpoint(result.checkpoint)
    assert mean.metrics["averaged_epochs"] == [k.epoch for k in kept] and "top1" in mean.metrics["val"]
    files = [load_checkpoint(k.path).model_state for k in kept]
    key = "model.head.weight" if "model.head.weight" in mean.model_state else next(iter(mean.model_state))
    assert torch.equal(mean.model_state[key], ((files[0][key].double() + files[1][key].double()) / 2).float())
    assert json.loads((result.run_dir / "test_metrics.json").read_text())["checkpoint"] == str(result.checkpoint)


def test_with_an_ema_the_kept_epochs_hold_the_served_weights_and_resume_keeps_them(tiny_config):
    common = ("train.epochs=3", "train.ema_decay=0.5", "train.average_top=3")
    full = train(tiny_config(*common, "train.run_name=full"), progress=False)
    last = load_checkpoint(full.run_dir / "checkpoints" / "last.safetensors")
    final = load_checkpoint(averaging.top_path(full.run_dir / "checkpoints", 3))
    assert final.model_state.keys() == last.ema_state.keys()
    assert all(torch.equal(final.model_state[k], v) for k, v in last.ema_state.items())  # EMA, not raw
    part = train(tiny_config(*common, "train.run_name=part"), progress=False, stop_after_epochs=2)
    resumed = train(tiny_config(*common, f"train.resume={part.run_dir}"), progress=False)
    a = load_checkpoint(full.run_dir / "checkpoints" / "averaged.safetensors").model_state
    b = load_checkpoint(resumed.run_dir / "checkpoints" / "averaged.safetensors").model_state
    assert all(torch.equal(a[k], b[k]) for k in a)
