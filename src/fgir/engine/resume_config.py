"""The configuration of a resumed run.

`train.resume=<run dir>` continues a run with the config it was trained with: the run's own
config.yaml with command-line overrides on top (`load_run_config`), so no recipe is needed. Whatever
config reaches the trainer is compared with the one stored in the run's `last` checkpoint
(`check_resume_changes`): the keys of CHANGEABLE_ON_RESUME may differ, every other difference (the
model, the data, the optimizer and the shape of the schedule) is refused, naming the key, the run's
value and the given one.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import yaml

from fgir.config import Config, ConfigError, from_dict, load_saved_config, schema_keys
from fgir.engine.checkpoint import read_metadata

RUN_CONFIG = "config.yaml"

CHANGEABLE_ON_RESUME = (
    # The schedule is recomputed from these: a longer run, or a lower peak lr after a divergence.
    "train.epochs", "train.lr",
    # Where and how fast the same computation runs.
    "train.device", "train.precision", "train.compile", "train.channels_last", "train.grad_checkpointing",
    "data.num_workers", "data.eval_batch_size",
    # Validation, checkpoints, the divergence guard and logging: not the weights' trajectory.
    "train.eval_every", "train.checkpoint_every_steps", "train.max_bad_steps", "train.log_every",
    "train.tensorboard", "train.wandb", "train.wandb_project",
    # Leave out the unreadable images that stopped a run.
    "data.on_error",
    # The same files moved: the class names must match the checkpoint's, and an adapter-only
    # checkpoint checks the SHA-256 of the backbone weights.
    "data.root", "model.weights",
)
# Where a run lives and how it began: a resumed run is found by train.resume and takes its weights
# from its own checkpoint.
NOT_COMPARED = ("train.resume", "train.output_dir", "train.run_name", "train.init_from", "train.init_new_head")
SHOWN = 3  # refused keys named in the error

_ABSENT = "(absent)"  # a key of the other config's method only


def leaf_keys(*configs: Config) -> list[str]:
    """Keys holding one value in the schemas of `configs`' methods (nested sections excluded; a free-form
    mapping counts as one value), each once, in schema order."""
    keys = dict.fromkeys(key for config in configs for key in schema_keys(config.model.method))
    return [key for key in keys if not any(other.startswith(f"{key}.") for other in keys)]


def load_run_config(run_dir: str | os.PathLike, overrides: list[str]) -> Config:
    """The run's saved config with `key=value` overrides on top: what `fgir train train.resume=X` runs."""
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise ConfigError(f"train.resume={run_dir}: no {RUN_CONFIG} there (not a run directory?)")
    return load_saved_config(path, overrides)


def checkpoint_config(path: str | os.PathLike) -> Config:
    """The config stored in a checkpoint, read from its metadata alone (no tensors)."""
    return from_dict(yaml.safe_load(read_metadata(path)["config"]), origin=f"checkpoint {path}")


def value(config: Config, key: str) -> Any:
    return functools.reduce(lambda node, name: getattr(node, name, _ABSENT), key.split("."), config)


def check_resume_changes(run: Config, given: Config, run_dir: str | os.PathLike) -> list[str]:
    """The keys whose value `given` changes (all in CHANGEABLE_ON_RESUME); a ConfigError for any
    other difference from the run's config `run`."""
    changed, refused = [], []
    for key in leaf_keys(run, given):
        if key in NOT_COMPARED or value(run, key) == value(given, key):
            continue
        (changed if key in CHANGEABLE_ON_RESUME else refused).append(key)
    if refused:
        shown = "; ".join(f"{key}: the run has {value(run, key)!r}, given {value(given, key)!r}"
                          for key in refused[:SHOWN])
        rest = refused[SHOWN:]
        more = f" (and {len(rest)} more: {', '.join(rest[:10])}{', ...' if len(rest) > 10 else ''})" if rest else ""
        raise ConfigError(
            f"train.resume={run_dir}: a resumed run keeps its model, data and schedule, but {shown}{more}. "
            f"Resume with the run's own config (fgir train train.resume={run_dir}), or start a new run from "
            f"its weights with train.init_from={run_dir}")
    return changed
