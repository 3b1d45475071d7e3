"""Where a run's numbers go: metrics.csv + metrics.json per epoch, TensorBoard scalars, and
optionally Weights & Biases (off by default), and the unreadable images skipped per epoch
(skipped_images.json, with data.on_error=skip). Under torchrun only rank 0 writes (`writes`).

Each metric has one tag: train/loss, train/lr and train/img_per_s per optimizer step; val/<metric>
and the epoch's counts (train/epoch_s, train/skipped_steps, train/skipped_images) per epoch, at the
step the epoch ended. A run has one TensorBoard stream, its tb/ folder: a resumed run adds a file
there that starts with a purge marker, so TensorBoard drops what an interrupted attempt logged after
the checkpoint the run resumed from (those steps are trained again)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from fgir.config import Config, to_dict
from fgir.fileio import atomic_write_text

# Per-epoch row entries that are not logged as scalars: logged per step, or the axes themselves.
NOT_SCALARS = ("epoch", "step", "train_loss", "lr", "train_img_per_s")


def epoch_tag(key: str) -> str:
    """The TensorBoard / W&B tag of a per-epoch row entry: val_top1 -> val/top1, epoch_s -> train/epoch_s."""
    return f"val/{key[len('val_'):]}" if key.startswith("val_") else f"train/{key}"


class RunLog:
    def __init__(self, run_dir: Path, config: Config, writes: bool = True):
        self.run_dir = run_dir
        self.config = config
        self.writes = writes
        self.rows: list[dict[str, Any]] = []
        self.tb = None
        self.wandb = None

    def start(self, step: int) -> None:
        """Open the streams once the run really starts, `step` optimizer steps in (0 for a new run);
        a resumed run keeps the rows of its earlier epochs."""
        path = self.run_dir / "metrics.json"
        self.rows = json.loads(path.read_text()) if path.is_file() else []
        if not self.writes:
            return
        config = self.config
        if config.train.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # Steps up to `step` were logged by the run so far; any later ones are an interrupted
            # attempt's and are trained again.
            self.tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=step + 1 if step else None)
        if config.train.wandb:
            try:
                import wandb
            except ImportError as err:
                raise RuntimeError("train.wandb=true needs the wandb package: pip install wandb") from err
            self.wandb = wandb.init(project=config.train.wandb_project, name=self.run_dir.name,
                                    config=to_dict(config), dir=str(self.run_dir), resume="allow")

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def epoch(self, row: dict[str, Any], step: int) -> None:
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]
        if not self.writes:
            return
        numbers = {k: v for k, v in row.items() if k not in NOT_SCALARS and isinstance(v, (int, float))}
        self.scalars({epoch_tag(k): v for k, v in numbers.items()}, step)
        atomic_write_text(self.run_dir / "metrics.json", json.dumps(self.rows, indent=1))
        columns = list(dict.fromkeys(k for r in self.rows for k in r))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.run_dir / "metrics.csv", buffer.getvalue())

    def skipped_images(self, epoch: int, messages: list[str]) -> None:
        """Record which images an epoch left out; a resumed run keeps the earlier epochs' lists."""
        if not self.writes:
            return
        path = self.run_dir / "skipped_images.json"
        skipped = json.loads(path.read_text()) if path.is_file() else {}
        skipped[str(epoch)] = messages
        atomic_write_text(path, json.dumps(skipped, indent=1))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        self.tb = self.wandb = None
