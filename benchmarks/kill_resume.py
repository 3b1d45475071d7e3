"""Kill a training run at random moments (SIGKILL), resume it each time, and check that it ends
bit-identical to an uninterrupted run.

A tiny synthetic run with a checkpoint after every optimizer step (so kills land in steps, in
checkpoint writes and in validation) is started as a subprocess and killed after a random delay,
again and again, each time continuing with `train.resume=<run dir>` (or starting afresh while no
`last` checkpoint exists yet). After every kill the run directory must be loadable: the `last` and
`best` checkpoints open with their training state, metrics.json parses. At the end the final
weights, the per-epoch metrics and the test metrics must equal, bit for bit, those of the same
run never interrupted.

    python benchmarks/kill_resume.py --kills 20          # prints the number of kills survived

Also imported by tests/engine/test_kill_resume.py for a short version.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fgir.config import load_config
from fgir.data import ensure_synthetic
from fgir.engine.checkpoint import load_checkpoint

TIMING_KEYS = ("train_img_per_s", "epoch_s")
STEPS_PER_EPOCH = 6  # 24 training images at batch 4
START_UP_KILLS = 0.15  # share of the kills aimed at start-up (checkpoint restore)


def tiny_run_overrides(root: Path, epochs: int) -> list[str]:
    """A run of a few seconds per epoch on a 2-block ViT at 32 px, with every random stream in use
    (augmentation, drop path, label smoothing) and a checkpoint after every optimizer step
    (STEPS_PER_EPOCH of them per epoch)."""
    return [
        "model.backbone=vit_tiny_patch16_224", "model.pretrained=false",
        "model.backbone_args={patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}", "model.drop_path=0.1",
        "data.format=synthetic", f"data.root={root / 'synthetic'}", "data.synthetic.num_classes=3",
        "data.synthetic.train_per_class=8", "data.synthetic.val_per_class=4", "data.synthetic.test_per_class=3",
        "data.synthetic.image_size=40", "data.image_size=32", "data.resize_ratio=1.125", "data.augment=medium",
        "data.batch_size=4", "data.eval_batch_size=4", "data.num_workers=0",
        f"train.epochs={epochs}", "train.warmup_steps=2", "train.lr=0.01", "train.label_smoothing=0.1",
        "train.checkpoint_every_steps=1", "train.tensorboard=false", "train.device=cpu", "train.precision=fp32",
        f"train.output_dir={root / 'runs'}",
    ]


def train_command(overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "fgir.cli", "train", *overrides, "--no-progress"]


def child_env() -> dict[str, str]:
    # Bit-identity needs the same thread count in every process.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@dataclass
class KillReport:
    kills: int = 0  # SIGKILLs that hit a running training process
    half_written: int = 0  # kills that left a temporary file behind (killed mid-write)
    progressed: int = 0  # kills after which the last checkpoint was further on than after the previous one
    attempts: int = 0
    identical_weights: bool = False
    identical_metrics: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.identical_weights and self.identical_metrics


def check_loadable(run_dir: Path) -> int:
    """What a resumed run or a user would read must be whole (raises otherwise); returns the step of
    the `last` checkpoint (-1 without one)."""
    last, best = run_dir / "checkpoints" / "last.safetensors", run_dir / "checkpoints" / "best.safetensors"
    step = load_checkpoint(last, with_train_state=True).global_step if last.is_file() else -1
    if best.is_file():
        load_checkpoint(best)
    for name in ("metrics.json", "test_metrics.json", "skipped_images.json"):
        if (run_dir / name).is_file():
            json.loads((run_dir / name).read_text())
    return step


def stripped_rows(run_dir: Path) -> list[dict]:
    rows = json.loads((run_dir / "metrics.json").read_text())
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def same_result(a: Path, b: Path) -> tuple[bool, bool]:
    """(final weights equal bit for bit, per-epoch and test metrics equal)."""
    wa = load_checkpoint(a / "checkpoints" / "last.safetensors").model_state
    wb = load_checkpoint(b / "checkpoints" / "last.safetensors").model_state
    weights = wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    test = [json.loads((d / "test_metrics.json").read_text())["test"] for d in (a, b)]
    return weights, stripped_rows(a) == stripped_rows(b) and test[0] == test[1]


def timed_reference_run(command: list[str], run_dir: Path, timeout: float) -> tuple[float, float]:
    """Run to the end; returns (seconds until the run directory got its config.yaml, i.e. start-up:
    imports, data and model built, total seconds)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    startup = None
    while process.poll() is None:
        if startup is None and (run_dir / "config.yaml").is_file():
            startup = time.perf_counter() - start
        if time.perf_counter() - start > timeout:
            process.kill()
            raise RuntimeError(f"{' '.join(command)} took more than {timeout} s")
        time.sleep(0.01)
    total = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{process.stderr.read()[-3000:]}")
    return (startup if startup is not None else total), total


def kill_point(process: subprocess.Popen, run_dir: Path, rng: random.Random, startup: float, step_s: float) -> bool:
    """Wait for a random moment to kill `process`; False if it ended first. Mostly the moment is up
    to one step's time after this attempt's first checkpoint (so every attempt makes progress and
    kills land in steps, checkpoint writes and validation alike); sometimes during start-up, while
    the checkpoint is being restored."""
    last = run_dir / "checkpoints" / "last.safetensors"
    before = _identity(last)
    if rng.random() < START_UP_KILLS:
        deadline = time.perf_counter() + rng.uniform(0.5, startup)
        while time.perf_counter() < deadline:
            if process.poll() is not None:
                return False
            if _identity(last) not in (before, None):
                break  # started sooner than the reference run did (a lighter load): kill in a step instead
            time.sleep(0.005)
        else:
            return True
    while process.poll() is None and _identity(last) in (before, None):
        time.sleep(0.005)  # atomic writes replace the file: a new identity is this attempt's checkpoint
    try:
        process.wait(timeout=rng.uniform(0, step_s))
        return False
    except subprocess.TimeoutExpired:
        return True


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def kill_and_resume(root: Path, kills: int, epochs: int = 3, seed: int = 0, max_attempts: int | None = None,
                    log=print) -> KillReport:
    """Run the tiny recipe once uninterrupted, then again under random SIGKILLs until it finishes
    (at least `kills` of them, if the run lasts long enough); compare the two."""
    rng = random.Random(seed)
    overrides = tiny_run_overrides(root, epochs)
    ensure_synthetic(load_config(None, overrides).data)  # generated once, not part of any attempt's start-up
    startup, reference_s = timed_reference_run(train_command([*overrides, "train.run_name=reference"]),
                                               root / "runs" / "reference", timeout=1800)
    step_s = max(reference_s - startup, 0.5) / (epochs * STEPS_PER_EPOCH)
    log(f"uninterrupted run: {reference_s:.1f} s (about {startup:.1f} s of it start-up)")
    run_dir = root / "runs" / "killed"
    report = KillReport()
    step = -1
    max_attempts = max_attempts or 4 * kills + 20
    while report.attempts < max_attempts:
        report.attempts += 1
        resuming = (run_dir / "checkpoints" / "last.safetensors").is_file()
        extra = [f"train.resume={run_dir}"] if resuming else ["train.run_name=killed"]
        process = subprocess.Popen(train_command([*overrides, *extra]), env=child_env(),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if report.kills < kills and kill_point(process, run_dir, rng, startup, step_s):
            process.send_signal(signal.SIGKILL)
            process.wait()
            report.kills += 1
            tmp_left = list(run_dir.glob(".*.tmp")) + list((run_dir / "checkpoints").glob(".*.tmp"))
            report.half_written += bool(tmp_left)
            previous, step = step, check_loadable(run_dir)
            report.progressed += step > previous
            continue
        process.wait()
        stderr = process.stderr.read() if process.stderr else ""
        if process.returncode != 0:
            raise RuntimeError(f"attempt {report.attempts} failed ({process.returncode}):\n{stderr[-3000:]}")
        break
    else:
        raise RuntimeError(f"the run did not finish within {max_attempts} attempts")
    check_loadable(run_dir)
    report.identical_weights, report.identical_metrics = same_result(root / "runs" / "reference", run_dir)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs to aim for (default 20)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill delays")
    parser.add_argument("--workdir", help="where to put the runs (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp)
        report = kill_and_resume(root, args.kills, args.epochs, args.seed)
    print(f"kills survived: {report.kills} ({report.progressed} after progress, {report.half_written} mid-write, "
          f"{report.attempts} starts); "
          f"final weights identical: {report.identical_weights}; metrics identical: {report.identical_metrics}")
    return 0 if report.passed and report.kills >= args.kills else 1


if __name__ == "__main__":
    sys.exit(main())
