"""Learning-rate sweep as the ILA paper runs it (arXiv:2409.11051): train one run per lr on the train split,
pick the lr with the best validation top-1, train again on train_val with it and score the test
split once. Every run is an ordinary trainer run under one sweep folder:

    <output_dir>/<sweep name>/lr_0.1/ ...          selection runs (train -> val; test not scored)
    <output_dir>/<sweep name>/final_lr_0.1/ ...    train_val -> test with the chosen lr
    <output_dir>/<sweep name>/sweep.json, sweep.csv, sweep_val_top1.png

A finished selection run leaves `trial.json` in its folder, so a sweep started again with the same
name skips the lrs already done.

A paper recipe trains on train_val with no validation split (data.val=null); its lr is then chosen
on the papers' train.csv -> val.csv beside it, as the ILA reference's lr runs do.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from fgir.config import Config, ConfigError, apply_overrides
from fgir.engine.trainer import RunResult, train
from fgir.fileio import atomic_write_csv, atomic_write_text
from fgir.tools.plots import save_figure

DEFAULT_LRS = (0.3, 0.1, 0.03, 0.01, 0.003)  # the paper's grid
TRIAL_FILE = "trial.json"
PAPER_SELECTION_SPLITS = ("train.csv", "val.csv")  # the per-class 80/20 split of train_val


@dataclass
class Trial:
    lr: float
    val_top1: float
    run_dir: str


@dataclass
class SweepResult:
    sweep_dir: Path
    trials: list[Trial]
    best_lr: float
    final_run_dir: Path
    test_metrics: dict[str, Any]


def _lr_name(lr: float) -> str:
    return f"lr_{lr:g}"


def _check(config: Config, lrs: list[float]) -> None:
    if not lrs:
        raise ConfigError("a sweep needs at least one learning rate")
    bad = [lr for lr in lrs if not (math.isfinite(lr) and lr > 0)]
    if bad:
        raise ConfigError(f"learning rates must be positive numbers, got {', '.join(map(str, bad))}")
    if len({_lr_name(lr) for lr in lrs}) != len(lrs):
        raise ConfigError(f"learning rates must differ: {', '.join(map(str, lrs))}")
    check_repeatable(config, "a sweep", "the chosen lr's test top-1",
                     "start the sweep again with the same train.run_name to skip the lrs already done")


def check_repeatable(config: Config, who: str, reports: str, again: str) -> None:
    """What a tool that trains several scored runs and finds its own runs again needs: a test split,
    and no train.resume."""
    if not config.data.test:
        raise ConfigError(f"{who} reports {reports}: set data.test")
    if config.train.resume:
        raise ConfigError(f"train.resume does not apply to {who}; {again}")


def selection_splits(config: Config, splits: tuple[str, str] | None = None) -> tuple[str, str]:
    """The (train, val) splits the lr is chosen on: `splits` when given, else the config's own when it
    has a validation split, else the papers' train.csv -> val.csv (a recipe that trains on train_val)."""
    if splits is not None:
        return splits
    return (config.data.train, config.data.val) if config.data.val else PAPER_SELECTION_SPLITS


def _selection_run(config: Config, lr: float, sweep_dir: Path, splits: tuple[str, str], progress: bool) -> Trial:
    run_dir = sweep_dir / _lr_name(lr)
    if (run_dir / TRIAL_FILE).is_file():
        trial = Trial(**json.loads((run_dir / TRIAL_FILE).read_text()))
        print(f"{_lr_name(lr)}: done before, val top-1 {trial.val_top1:.2f}%")
        return trial
    trial_config = apply_overrides(config, [f"train.lr={lr}", f"train.output_dir={sweep_dir}",
                                            f"train.run_name={_lr_name(lr)}", "data.test=null",
                                            f"data.train={splits[0]}", f"data.val={splits[1]}"])
    result: RunResult = train(trial_config, progress=progress)
    # The trainer always validates after the last epoch, so the best checkpoint has a val score.
    trial = Trial(lr=lr, val_top1=float(result.val_metrics["top1"]), run_dir=str(result.run_dir))
    atomic_write_text(run_dir / TRIAL_FILE, json.dumps(asdict(trial), indent=1))
    return trial


def best_trial(trials: list[Trial]) -> Trial:
    """The highest validation top-1; on a tie, the lr listed first."""
    return max(trials, key=lambda t: t.val_top1)  # max keeps the first of equal keys


def sweep_lr(config: Config, lrs: list[float] | tuple[float, ...] = DEFAULT_LRS, sweep_name: str | None = None,
             train_val_split: str = "train_val.csv", progress: bool = True,
             splits: tuple[str, str] | None = None) -> SweepResult:
    """Run the sweep for `config` (its own lr is ignored) under `train.output_dir/<sweep_name>`: each lr
    trains on the first of `selection_splits(config, splits)` and is scored on the second; the final
    run trains on `train_val_split` (same folder as data.train) without validation."""
    lrs = [float(lr) for lr in lrs]
    _check(config, lrs)
    chosen_on = selection_splits(config, splits)
    name = sweep_name or config.train.run_name or (
        f"{config.data.name}-{config.model.method}-sweep-{datetime.now():%Y%m%d-%H%M%S}")
    sweep_dir = Path(config.train.output_dir) / name
    trials = [_selection_run(config, lr, sweep_dir, chosen_on, progress) for lr in lrs]
    best = best_trial(trials)
    print(f"chosen lr {best.lr:g} (val top-1 {best.val_top1:.2f}%); training on {train_val_split}")
    final_config = apply_overrides(config, [f"train.lr={best.lr}", f"data.train={train_val_split}", "data.val=null",
                                            f"train.output_dir={sweep_dir}", f"train.run_name=final_{_lr_name(best.lr)}"])
    final = train(final_config, progress=progress)
    assert final.test_metrics is not None  # data.test is set, so the trainer scored it
    result = SweepResult(sweep_dir, trials, best.lr, final.run_dir, final.test_metrics)
    write_summary(result)
    return result


def write_summary(result: SweepResult) -> None:
    """sweep.json (everything), sweep.csv (one row per lr) and sweep_val_top1.png, each atomically."""
    summary = {"lrs": [t.lr for t in result.trials], "trials": [asdict(t) for t in result.trials],
               "best_lr": result.best_lr, "final_run_dir": str(result.final_run_dir),
               "test_top1": result.test_metrics["top1"], "test": result.test_metrics}
    atomic_write_text(result.sweep_dir / "sweep.json", json.dumps(summary, indent=1))
    atomic_write_csv(result.sweep_dir / "sweep.csv", ("lr", "val_top1", "chosen", "run_dir"),
                     [(t.lr, f"{t.val_top1:.4f}", int(t.lr == result.best_lr), t.run_dir) for t in result.trials])
    plot_sweep(result, result.sweep_dir / "sweep_val_top1.png")


def plot_sweep(result: SweepResult, path: Path) -> Path:
    """Validation top-1 against lr (log axis), the chosen lr marked with its test top-1."""
    trials = sorted(result.trials, key=lambda t: t.lr)
    figure = Figure(figsize=(5, 3.5))
    axes = figure.add_subplot()
    axes.plot([t.lr for t in trials], [t.val_top1 for t in trials], marker="o", label="val top-1 (trained on train)")
    best = next(t for t in trials if t.lr == result.best_lr)
    axes.scatter([best.lr], [best.val_top1], s=120, facecolors="none", edgecolors="red",
                 label=f"chosen lr {best.lr:g}: test top-1 {result.test_metrics['top1']:.2f}%")
    axes.set_xscale("log")
    axes.set_xlabel("learning rate")
    axes.set_ylabel("top-1 (%)")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    return save_figure(figure, path)
