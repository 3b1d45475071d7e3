import csv
import json
from pathlib import Path

import pytest

from fgir.config import ConfigError
from fgir.engine.trainer import RunResult
from fgir.tools import sweep
from fgir.tools.sweep import Trial, best_trial, sweep_lr


def test_sweep_trains_each_lr_on_train_then_the_best_on_train_val(tiny_config, tmp_path):
    config = tiny_config("train.epochs=1", "train.warmup_steps=1")
    result = sweep_lr(config, lrs=[0.05, 1e-6], sweep_name="s", progress=False)
    sweep_dir = tmp_path / "runs" / "s"
    assert result.sweep_dir == sweep_dir
    assert [t.lr for t in result.trials] == [0.05, 1e-6]
    for trial in result.trials:
        run_dir = sweep_dir / f"lr_{trial.lr:g}"
        with open(run_dir / "metrics.csv") as handle:
            assert [float(r["val_top1"]) for r in csv.DictReader(handle)] == [pytest.approx(trial.val_top1)]
        assert json.loads((run_dir / "trial.json").read_text())["val_top1"] == trial.val_top1
        assert not (run_dir / "test_metrics.json").exists()  # the test split is scored once, by the final run
    expected = max(result.trials, key=lambda t: t.val_top1).lr
    assert result.best_lr == expected
    final_dir = sweep_dir / f"final_lr_{expected:g}"
    assert result.final_run_dir == final_dir
    saved = (final_dir / "config.yaml").read_text()
    assert "train: train_val.csv" in saved and "val: null" in saved and f"lr: {expected}" in saved
    scored = json.loads((final_dir / "test_metrics.json").read_text())
    assert result.test_metrics == scored["test"] and scored["test"]["num_samples"] == 9  # 3 classes x 3
    summary = json.loads((sweep_dir / "sweep.json").read_text())
    assert summary["best_lr"] == expected and summary["test_top1"] == scored["test"]["top1"]
    with open(sweep_dir / "sweep.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(float(r["lr"]), r["chosen"]) for r in rows] == [(t.lr, str(int(t.lr == expected))) for t in result.trials]
    assert (sweep_dir / "sweep_val_top1.png").stat().st_size > 0
    assert not list(sweep_dir.glob("*.tmp*"))


@pytest.fixture
def fake_train(monkeypatch):
    """The trainer replaced by a recorder whose val top-1 is a made-up function of the lr."""
    calls = []

    def train(config, progress=True):
        calls.append(config)
        run_dir = Path(config.train.output_dir) / config.train.run_name
        run_dir.mkdir(parents=True)
        val = {"top1": {0.3: 50.0, 0.1: 70.0, 0.03: 70.0, 0.01: 20.0, 0.003: 10.0}.get(config.train.lr, 0.0)}
        test = {"top1": 42.0, "top5": 90.0, "num_samples": 9} if config.data.test else None
        return RunResult(run_dir, run_dir / "best.safetensors", None if config.data.val is None else val, test)

    monkeypatch.setattr(sweep, "train", train)
    return calls


def test_sweep_selects_on_val_and_breaks_ties_by_list_order(tiny_config, fake_train):
    result = sweep_lr(tiny_config(), sweep_name="s", progress=False)
    selection, final = fake_train[:5], fake_train[5]
    assert [c.train.lr for c in selection] == [0.3, 0.1, 0.03, 0.01, 0.003]
    assert all(c.data.test is None and c.data.train == "train.csv" and c.data.val == "val.csv" for c in selection)
    assert result.best_lr == 0.1  # 0.1 and 0.03 tie at 70%: the first listed wins
    assert (final.train.lr, final.data.train, final.data.val, final.data.test) == (0.1, "train_val.csv", None, "test.csv")
    assert final.train.run_name == "final_lr_0.1" and result.test_metrics["top1"] == 42.0


def test_a_recipe_that_trains_on_train_val_chooses_its_lr_on_the_papers_train_and_val(tiny_config, fake_train):
    # The paper recipes' data.train=train_val.csv data.val=null train.select=last.
    recipe = tiny_config("data.train=train_val.csv", "data.val=null", "train.select=last")
    sweep_lr(recipe, lrs=[0.3, 0.1], sweep_name="s", progress=False)
    selection, final = fake_train[:2], fake_train[2]
    assert all((c.data.train, c.data.val, c.train.select) == ("train.csv", "val.csv", "last") for c in selection)
    assert (final.train.lr, final.data.train, final.data.val) == (0.1, "train_val.csv", None)
    sweep_lr(recipe, lrs=[0.3], sweep_name="t", progress=False, splits=("a.csv", "b.csv"))
    assert (fake_train[3].data.train, fake_train[3].data.val) == ("a.csv", "b.csv")


def test_a_restarted_sweep_skips_the_lrs_already_done(tiny_config, fake_train, tmp_path):
    done = tmp_path / "runs" / "s" / "lr_0.3"
    done.mkdir(parents=True)
    (done / "trial.json").write_text(json.dumps({"lr": 0.3, "val_top1": 99.0, "run_dir": str(done)}))
    result = sweep_lr(tiny_config(), lrs=[0.3, 0.1], sweep_name="s", progress=False)
    assert [c.train.lr for c in fake_train] == [0.1, 0.3]  # only 0.1 trained for selection; 0.3 won from its file
    assert result.best_lr == 0.3


def test_best_trial_is_the_highest_val_top1():
    trials = [Trial(0.1, 10.0, "a"), Trial(0.01, 30.0, "b"), Trial(0.001, 30.0, "c")]
    assert best_trial(trials).run_dir == "b"


@pytest.mark.parametrize("lrs,overrides,message", [
    ([], [], "at least one learning rate"),
    ([0.1, -1.0], [], "must be positive numbers, got -1.0"),
    ([0.1, 0.1], [], "must differ"),
    ([0.1], ["data.test=null"], "set data.test"),
])
def test_bad_sweeps_are_refused_before_training(tiny_config, fake_train, lrs, overrides, message):
    with pytest.raises(ConfigError, match=message):
        sweep_lr(tiny_config(*overrides), lrs=lrs, sweep_name="s", progress=False)
    assert fake_train == []
