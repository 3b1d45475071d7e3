"""Accuracy against cost for a set of finished runs, as the ILA paper plots its PEFT table: test top-1
against forward GFLOPs per image, one bubble per run whose area is its trainable parameters.

    fgir analyze tradeoff runs/cotton-* --out tradeoff.png

Each run contributes its `test_metrics.json` (top-1), `trainable_params.json` and the model its best
checkpoint describes, rebuilt with random weights only to count FLOPs.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure

from fgir.engine.checkpoint import load_checkpoint
from fgir.errors import FgirError
from fgir.fileio import atomic_write_csv
from fgir.methods import build_model
from fgir.tools.bench import count_flops
from fgir.tools.plots import save_figure


@dataclass(frozen=True)
class RunCost:
    run: str
    method: str
    image_size: int
    test_top1: float
    trainable_params: int
    gflops_per_image: float
    gmacs_per_image: float  # the papers' "FLOPs": multiply-accumulates, half the FLOPs


def run_cost(run_dir: str | os.PathLike) -> RunCost:
    """What one finished run achieved and cost."""
    run_dir = Path(run_dir)
    try:
        top1 = json.loads((run_dir / "test_metrics.json").read_text())["test"]["top1"]
        trainable = json.loads((run_dir / "trainable_params.json").read_text())["trainable"]
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as error:
        raise FgirError(f"{run_dir}: not a finished run with a scored test split and trainable_params.json "
                        f"({type(error).__name__}: {error})") from None
    checkpoint = load_checkpoint(run_dir)
    config = checkpoint.config
    model = build_model(config.model, len(checkpoint.class_names), config.data.image_size, pretrained=False)
    flops = count_flops(model, config.data.image_size, torch.device("cpu"))
    return RunCost(run_dir.name, config.model.method, config.data.image_size, top1, trainable, flops / 1e9,
                   flops / 2e9)


def tradeoff_plot(run_dirs: list[str | os.PathLike], out: str | os.PathLike) -> tuple[list[RunCost], Path]:
    """The bubble plot of `run_dirs` at `out`, and a CSV of the same numbers beside it."""
    if not run_dirs:
        raise FgirError("no runs given")
    costs = [run_cost(run_dir) for run_dir in run_dirs]
    figure = Figure(figsize=(7, 5))
    axes = figure.subplots()
    largest = max(cost.trainable_params for cost in costs) or 1
    for cost in costs:
        # Bubble area in proportion to the trainable parameters (the largest run: 2,000 pt^2).
        axes.scatter(cost.gflops_per_image, cost.test_top1, s=40 + 2000 * cost.trainable_params / largest, alpha=0.5)
        axes.annotate(f"{cost.method}\n{cost.trainable_params / 1e6:.2f} M", (cost.gflops_per_image, cost.test_top1),
                      ha="center", va="center", fontsize=8)
    axes.set(xlabel="GFLOPs per image (forward; GMACs = GFLOPs / 2)", ylabel="test top-1 (%)",
             title="accuracy vs compute; bubble area = trainable parameters")
    axes.grid(alpha=0.3)
    out = save_figure(figure, out)
    atomic_write_csv(out.with_suffix(".csv"), list(asdict(costs[0])), [list(asdict(cost).values()) for cost in costs])
    return costs, out
