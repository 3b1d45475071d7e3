"""`fgir results RUN...`: finished runs beside the papers' numbers.

Runs of the same dataset, method, backbone, image size and setting (frozen backbone or full
fine-tuning) with different seeds are one row, as mean +- std (population std over the seeds, as the
papers' tables); the paper's number for that row (fgir.tools.paper_tables) and the difference follow.
A run is "frozen" when less than half of its parameters train (trainable_params.json).
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

from fgir.errors import FgirError
from fgir.tools.paper_tables import PAPER_RESULTS, PaperResult, paper_result

SEEDS_SUMMARY = "seeds_summary"  # seeds_summary.json / .md of `fgir train --seeds`, beside the seeds' runs


@dataclass(frozen=True)
class FinishedRun:
    run: Path
    dataset: str
    method: str
    backbone: str
    image_size: int
    setting: str
    seed: int
    top1: float


@dataclass(frozen=True)
class ResultRow:
    dataset: str
    method: str
    backbone: str
    image_size: int
    setting: str
    seeds: list[int]
    top1: list[float]
    paper: PaperResult | None

    @property
    def mean(self) -> float:
        return statistics.fmean(self.top1)

    @property
    def std(self) -> float:
        return statistics.pstdev(self.top1)

    @property
    def difference(self) -> float | None:
        return None if self.paper is None else self.mean - self.paper.top1


def read_run(run_dir: str | os.PathLike) -> FinishedRun:
    run = Path(run_dir)
    try:
        summary = json.loads((run / "test_metrics.json").read_text())
        trainable = json.loads((run / "trainable_params.json").read_text())
        config, top1 = summary["config"], summary["test"]["top1"]
        frozen = trainable["trainable"] < trainable["total"] / 2
        return FinishedRun(run, config["data"]["name"], config["model"]["method"], config["model"]["backbone"],
                         config["data"]["image_size"], "frozen" if frozen else "full", config["train"]["seed"], top1)
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as err:
        raise FgirError(f"{run}: not a finished run with a scored test split ({type(err).__name__}: {err}); "
                        "fgir results reads test_metrics.json and trainable_params.json") from None


def result_rows(run_dirs: list[str | os.PathLike], papers: list[PaperResult] = PAPER_RESULTS) -> list[ResultRow]:
    """One row per kind of run (seeds pooled), beside its number in `papers`."""
    groups: dict[tuple, list[FinishedRun]] = {}
    for run_dir in run_dirs:
        result = read_run(run_dir)
        key = (result.dataset, result.method, result.backbone, result.image_size, result.setting)
        groups.setdefault(key, []).append(result)
    rows = []
    for (dataset, method, backbone, size, setting), runs in sorted(groups.items()):
        seeds = [run.seed for run in runs]
        if len(set(seeds)) < len(seeds):
            twice = sorted({seed for seed in seeds if seeds.count(seed) > 1})
            raise FgirError(f"two runs of {dataset} / {method} / {size} px with the same seed {twice[0]}: "
                            f"{', '.join(str(run.run) for run in runs if run.seed == twice[0])}")
        rows.append(ResultRow(dataset, method, backbone, size, setting, seeds, [run.top1 for run in runs],
                              paper_result(dataset, method, backbone, size, setting, papers)))
    return rows


HEADER = ("dataset", "method", "backbone", "size", "setting", "seeds", "ours top-1", "paper", "difference", "source")


def _cells(row: ResultRow) -> tuple[str, ...]:
    ours = f"{row.mean:.2f}" + (f" +- {row.std:.2f}" if len(row.top1) > 1 else "")
    paper = "-" if row.paper is None else f"{'~' if row.paper.approximate else ''}{row.paper.top1:.2f}"
    difference = "-" if row.difference is None else f"{row.difference:+.2f}"
    source = "no published number" if row.paper is None else row.paper.source
    return (row.dataset, row.method, row.backbone, str(row.image_size), row.setting,
            " ".join(map(str, row.seeds)), ours, paper, difference, source)


def format_results(rows: list[ResultRow], markdown: bool = False) -> str:
    table = [HEADER, *(_cells(row) for row in rows)]
    if markdown:
        lines = ["| " + " | ".join(cells) + " |" for cells in table]
        return "\n".join([lines[0], "|" + "---|" * len(HEADER), *lines[1:]])
    widths = [max(len(cells[i]) for cells in table) for i in range(len(HEADER))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()
                     for cells in table)


def format_paper_tables() -> str:
    """Every published number fgir compares against, as a markdown table (docs/results.md)."""
    lines = ["| dataset | method | backbone | size | setting | paper top-1 | source |", "|---|---|---|---|---|---|---|"]
    for r in PAPER_RESULTS:
        top1 = f"{'~' if r.approximate else ''}{r.top1:.2f}"
        lines.append(f"| {r.dataset} | {r.method} | {r.backbone} | {r.image_size} | {r.setting} | {top1} | {r.source} |")
    return "\n".join(lines)
