"""Where a run's numbers go: metrics.csv + metrics.json per epoch, TensorBoard scalars, and
optionally Weights & Biases (off by default), and the unreadable images skipped per epoch
(skipped_images.json, with data.on_error=skip). Under torchrun only rank 0 writes (`writes`)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from fgir.config import Config, to_dict
from fgir.fileio import atomic_write_text


class RunLog:
    def __init__(self, run_dir: Path, config: Config, writes: bool = True):
        self.run_dir = run_dir
        self.writes = writes
        self.rows: list[dict[str, Any]] = self._read_existing()
        self.tb = None
        self.wandb = None
        if not writes:
            return
        if config.train.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"))
        if config.train.wandb:
            try:
                import wandb
            except ImportError as err:
                raise RuntimeError("train.wandb=true needs the wandb package: pip install wandb") from err
            self.wandb = wandb.init(project=config.train.wandb_project, name=run_dir.name, config=to_dict(config),
                                    dir=str(run_dir), resume="allow")

    def _read_existing(self) -> list[dict[str, Any]]:
        """A resumed run keeps the rows of its earlier epochs."""
        path = self.run_dir / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else []

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
        self.scalars({k: v for k, v in row.items() if k != "epoch" and isinstance(v, (int, float))}, step)
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
