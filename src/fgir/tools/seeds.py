"""`fgir train RECIPE --seeds 1 10 100`: one run per seed and the mean +- std of their test metrics,
as the papers report their tables (GLSim, arXiv 2407.12891, and ILA, arXiv 2409.11051: seeds 1, 10
and 100). Every seed is an ordinary trainer run under one folder:

    <output_dir>/<name>/seed_1/ ...                 a run, its test split scored once
    <output_dir>/<name>/seeds_summary.json, .md     mean +- std over the seeds, and the papers' number

Started again with the same name, a seed whose run finished (test_metrics.json) is skipped and one
that stopped part-way is resumed from its `last` checkpoint; a finished seed trained with other
settings is refused rather than averaged with this config's runs.
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fgir.config import Config, ConfigError, apply_overrides, from_dict
from fgir.engine.resume_config import CHANGEABLE_ON_RESUME, NOT_COMPARED, leaf_keys, value
from fgir.engine.trainer import train
from fgir.fileio import atomic_write_text
from fgir.tools.paper_tables import PAPER_RESULTS, PaperResult
from fgir.tools.results import SEEDS_SUMMARY, format_results, result_rows
from fgir.tools.sweep import check_repeatable

TEST_FILE = "test_metrics.json"


@dataclass
class SeedsResult:
    seeds_dir: Path
    run_dirs: list[Path]
    summary: dict[str, Any]


def seeds_folder_name(config: Config) -> str:
    """train.run_name, else a name fixed by the recipe (so a second call finds the seeds done)."""
    return config.train.run_name or f"{config.data.name}-{config.model.method}-{config.data.image_size}px-seeds"


def _check(config: Config, seeds: list[int]) -> None:
    if not seeds:
        raise ConfigError("--seeds needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds must differ, got {' '.join(map(str, seeds))}")
    check_repeatable(config, "--seeds", "the test metrics of each seed", "run the same command again (same "
                     "train.run_name) to skip the seeds done and resume the one that stopped")


def _refuse_other_settings(run_dir: Path, saved: Config, planned: Config) -> None:
    ignored = (*NOT_COMPARED, *CHANGEABLE_ON_RESUME)
    differ = [key for key in leaf_keys(saved, planned)
              if key not in ignored and value(saved, key) != value(planned, key)]
    if differ:
        key = differ[0]
        raise ConfigError(f"{run_dir} finished with other settings ({key}: the run has {value(saved, key)!r}, "
                          f"given {value(planned, key)!r}); give another train.run_name")


def _seed_run(config: Config, seed: int, seeds_dir: Path, progress: bool) -> Path:
    run_dir = seeds_dir / f"seed_{seed}"
    planned = apply_overrides(config, [f"train.seed={seed}", f"train.output_dir={seeds_dir}",
                                       f"train.run_name=seed_{seed}"])
    if (run_dir / TEST_FILE).is_file():
        scored = json.loads((run_dir / TEST_FILE).read_text())
        _refuse_other_settings(run_dir, from_dict(scored["config"]), planned)
        print(f"seed {seed}: done before ({run_dir}), test top-1 {scored['test']['top1']:.2f}%")
        return run_dir
    if (run_dir / "checkpoints" / "last.safetensors").is_file():
        planned = apply_overrides(planned, [f"train.resume={run_dir}"])
    return train(planned, progress=progress).run_dir


def summarize(run_dirs: list[Path]) -> dict[str, Any]:
    """Per test metric that every run has as a number: its values in seed order, mean and population std
    (as `fgir results` and the papers' tables)."""
    scored = [json.loads((run_dir / TEST_FILE).read_text()) for run_dir in run_dirs]
    tests = [entry["test"] for entry in scored]
    names = [key for key, number in tests[0].items() if isinstance(number, float)
             and all(isinstance(test.get(key), float) for test in tests)]
    return {"seeds": [entry["config"]["train"]["seed"] for entry in scored],
            "runs": [run_dir.name for run_dir in run_dirs],  # folders beside this summary
            "test": {name: {"mean": statistics.fmean(values), "std": statistics.pstdev(values), "values": values}
                     for name in names for values in [[test[name] for test in tests]]}}


def summary_markdown(summary: dict[str, Any], run_dirs: list[Path],
                     papers: list[PaperResult] = PAPER_RESULTS) -> str:
    seeds = summary["seeds"]
    lines = ["| test metric | mean +- std | " + " | ".join(f"seed {seed}" for seed in seeds) + " |",
             "|---|---|" + "---|" * len(seeds)]
    for name, entry in summary["test"].items():
        values = " | ".join(f"{number:.2f}" for number in entry["values"])
        lines.append(f"| {name} | {entry['mean']:.2f} +- {entry['std']:.2f} | {values} |")
    return "\n".join([*lines, "", format_results(result_rows(run_dirs, papers), markdown=True)])


def train_seeds(config: Config, seeds: list[int], progress: bool = True,
                papers: list[PaperResult] = PAPER_RESULTS) -> SeedsResult:
    """Train `config` once per seed under `train.output_dir/<seeds_folder_name(config)>` and write
    seeds_summary.json and seeds_summary.md there (`papers`: the published numbers to compare with)."""
    seeds = [int(seed) for seed in seeds]
    _check(config, seeds)
    seeds_dir = Path(config.train.output_dir) / seeds_folder_name(config)
    run_dirs = [_seed_run(config, seed, seeds_dir, progress) for seed in seeds]
    if int(os.environ.get("RANK", "0")) != 0:
        return SeedsResult(seeds_dir, run_dirs, {})  # under torchrun, rank 0 scores and writes
    summary = summarize(run_dirs)
    atomic_write_text(seeds_dir / f"{SEEDS_SUMMARY}.json", json.dumps(summary, indent=1))
    atomic_write_text(seeds_dir / f"{SEEDS_SUMMARY}.md", summary_markdown(summary, run_dirs, papers) + "\n")
    return SeedsResult(seeds_dir, run_dirs, summary)
