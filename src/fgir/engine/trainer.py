"""The training loop: read top to bottom.

config -> data + model -> epochs of (train, validate, checkpoint) -> test once with the
best-validation weights. Nothing here knows how a method works inside: a model maps images to
logits. Model selection uses the validation split only; the test split is scored exactly once.

Safety: a step with a non-finite loss or gradient is skipped (counted in `skipped_steps`) and
`train.max_bad_steps` of them in a row raise DivergenceError. SIGTERM / SIGINT end the current
optimizer step, write a resumable `last` checkpoint that records the position inside the epoch and
raise TrainingInterrupted; `train.resume` then continues bit-identically (as after
`train.checkpoint_every_steps` checkpoints).
"""

from __future__ import annotations

import itertools
import json
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from fgir.config import Config, save_config, to_dict
from fgir.data import build_batch_mix, build_dataset, build_loader, build_transform, dataset_info
from fgir.engine.checkpoint import CheckpointError, load_checkpoint, load_model_state, save_checkpoint
from fgir.engine.device import autocast, resolve_device, resolve_precision
from fgir.engine.evaluator import predict_loader
from fgir.engine.losses import classification_loss
from fgir.engine.metrics import classification_metrics
from fgir.engine.optim import build_optimizer, build_scheduler
from fgir.engine.rng import rng_state, seed_everything, set_rng_state
from fgir.engine.run_log import RunLog
from fgir.errors import FgirError
from fgir.fileio import atomic_write_text
from fgir.models.factory import build_model


@dataclass
class RunResult:
    run_dir: Path
    checkpoint: Path  # the checkpoint the test split was scored with
    val_metrics: dict[str, Any] | None
    test_metrics: dict[str, Any] | None


class DivergenceError(FgirError):
    """Too many optimizer steps in a row had a non-finite loss or gradient."""


class TrainingInterrupted(FgirError):
    """SIGTERM / SIGINT arrived; a resumable checkpoint was written before stopping."""


@dataclass
class EpochState:
    """Where training stands inside an epoch. Mid-epoch checkpoints store it so that a resumed run
    skips the batches already trained on and ends bit-identical to an uninterrupted one."""

    batches: int = 0  # batches of this epoch already trained on
    loss_sum: float = 0.0
    seen: int = 0
    skipped_steps: int = 0
    bad_in_a_row: int = 0  # carried over from epoch to epoch


class StopSignals:
    """While active, SIGTERM and SIGINT only set `received`; the loop stops at the end of the step
    (a second signal raises KeyboardInterrupt at once). The previous handlers come back on exit.
    Signals can only be caught in the main thread; elsewhere nothing is installed."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.received:  # a second signal: the user does not want to wait for the step to end
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def eval_loader(config: Config, split: str, device: torch.device) -> DataLoader:
    """The `split` with the test transform, in dataset order: validation and test read data alike."""
    dataset = build_dataset(config.data, split, build_transform(config.data, train=False))
    return build_loader(dataset, batch_size=config.data.eval_batch_size, train=False, seed=config.train.seed,
                        num_workers=config.data.num_workers, pin_memory=device.type == "cuda")


def make_run_dir(config: Config) -> Path:
    if config.train.resume:
        run_dir = Path(config.train.resume)
        if not (run_dir / "checkpoints" / "last.safetensors").is_file():
            raise CheckpointError(f"train.resume={run_dir}: no checkpoints/last.safetensors to resume from")
        return run_dir
    name = config.train.run_name or f"{config.data.name}-{config.model.method}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = Path(config.train.output_dir) / name
    if (run_dir / "checkpoints").exists():
        raise FileExistsError(f"{run_dir} already holds a run; resume it with train.resume={run_dir} or pick another train.run_name")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def train(config: Config, progress: bool = True, stop_after_epochs: int | None = None) -> RunResult:
    """Run (or resume) the recipe. `stop_after_epochs` ends this call early, e.g. to fit a job's time
    limit; the schedule still spans `train.epochs` and `train.resume` continues the run later."""
    seed_everything(config.train.seed)
    device = resolve_device(config.train.device)
    dtype = resolve_precision(config.train.precision, device)
    run_dir = make_run_dir(config)
    save_config(config, run_dir / "config.yaml")

    # Data. The class count comes from the dataset description, never from one split's labels.
    num_classes, class_names = dataset_info(config.data)
    train_set = build_dataset(config.data, "train", build_transform(config.data, train=True))
    train_loader = build_loader(train_set, batch_size=config.data.batch_size, train=True, seed=config.train.seed,
                                num_workers=config.data.num_workers, pin_memory=device.type == "cuda")
    val_loader = eval_loader(config, "val", device) if config.data.val else None
    batch_mix = build_batch_mix(config.data, num_classes)

    # Model, optimizer, schedule (per optimizer step). A resumed run takes every weight from its
    # checkpoint, so it does not fetch pretrained weights again (it may run offline).
    pretrained = False if config.train.resume else None
    model = build_model(config.model, num_classes, config.data.image_size, pretrained=pretrained).to(device)
    optimizer = build_optimizer(model, config.train)
    steps_per_epoch = math.ceil(len(train_loader) / config.train.grad_accum_steps)
    scheduler = build_scheduler(optimizer, steps_per_epoch * config.train.epochs, config.train)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    start_epoch, global_step, best_top1 = 0, 0, -1.0
    epoch_state, resume_rng = EpochState(), None
    if config.train.resume:
        last = load_checkpoint(run_dir / "checkpoints" / "last.safetensors", with_train_state=True)
        load_model_state(model, last.model_state, str(last.path))
        state = last.train_state
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        use_config_lr(optimizer, scheduler, config.train.lr)
        set_rng_state(state["rng"])
        start_epoch, global_step, best_top1 = last.epoch, last.global_step, state["best_top1"]
        epoch_state = EpochState(**{**state.get("epoch_state", {}), "bad_in_a_row": 0})  # a fresh count
        if epoch_state.batches:  # a mid-epoch checkpoint: the RNG is restored after skipping its batches
            resume_rng = state["rng"]
        print(f"resumed {run_dir} at epoch {start_epoch} (step {global_step}, batch {epoch_state.batches})")

    log = RunLog(run_dir, config)
    ckpt_dir = run_dir / "checkpoints"

    def save_last(epoch: int, global_step: int, metrics: dict[str, Any], epoch_state: EpochState) -> None:
        # `epoch` counts finished epochs; a mid-epoch checkpoint also says how far the next one got.
        train_state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                       "scaler": scaler.state_dict(), "rng": rng_state(), "best_top1": best_top1,
                       "epoch_state": asdict(epoch_state)}
        save_checkpoint(ckpt_dir / "last.safetensors", model, config, class_names, epoch=epoch,
                        global_step=global_step, metrics=metrics, train_state=train_state)

    try:
        end_epoch = config.train.epochs if stop_after_epochs is None else min(config.train.epochs, start_epoch + stop_after_epochs)
        with StopSignals() as stop:
            for epoch in range(start_epoch, end_epoch):
                train_loader.sampler.set_epoch(epoch)
                row, global_step, epoch_state = train_one_epoch(
                    model, train_loader, optimizer, scheduler, scaler, batch_mix, config, device, dtype, epoch,
                    global_step, log, progress, epoch_state, resume_rng, stop, save_last, run_dir)
                resume_rng = None
                evaluate_now = val_loader is not None and ((epoch + 1) % config.train.eval_every == 0
                                                           or epoch + 1 == config.train.epochs)
                if evaluate_now:
                    predictions = predict_loader(model, val_loader, device, dtype, "val", progress)
                    val = classification_metrics(predictions.logits, predictions.labels)
                    row.update({f"val_{k}": v for k, v in val.items() if k != "num_samples"})
                    if val["top1"] > best_top1:
                        best_top1 = val["top1"]
                        save_checkpoint(ckpt_dir / "best.safetensors", model, config, class_names,
                                        epoch=epoch + 1, global_step=global_step, metrics={"val": val})
                log.epoch(row, global_step)
                print(_epoch_line(row, config.train.epochs))
                save_last(epoch + 1, global_step, row, epoch_state)
                if stop.received:  # arrived during validation: the epoch's checkpoint is already written
                    raise interrupted(stop.received, run_dir, f"the end of epoch {epoch + 1}", global_step)
    finally:
        log.close()
    if end_epoch < config.train.epochs:
        print(f"stopped after epoch {end_epoch}/{config.train.epochs}; continue with train.resume={run_dir}")
        return RunResult(run_dir, ckpt_dir / "last.safetensors", None, None)
    return finish(run_dir, config, model, device, dtype, progress)


def train_one_epoch(model, loader, optimizer, scheduler, scaler, batch_mix, config: Config, device, dtype,
                    epoch: int, global_step: int, log: RunLog, progress: bool, state: EpochState,
                    resume_rng: dict[str, Any] | None, stop: StopSignals,
                    save_last: Callable[..., None], run_dir: Path) -> tuple[dict[str, Any], int, EpochState]:
    model.train()
    accum, every = config.train.grad_accum_steps, config.train.checkpoint_every_steps
    fresh, start = 0, time.perf_counter()  # images trained on by this call, for the rate
    batches = iter(loader)
    if state.batches:
        # Resuming mid-epoch. The epoch's order is a pure function of (seed, epoch), so dropping the
        # batches already trained on continues the same stream (they are still read and decoded). The
        # RNG goes back to its state at the checkpoint only now: creating the iterator draws from it.
        next(itertools.islice(batches, state.batches, state.batches), None)
        set_rng_state(resume_rng)
    bar = tqdm(batches, total=len(loader), initial=state.batches, desc=f"epoch {epoch + 1}/{config.train.epochs}",
               leave=False, disable=not progress)
    optimizer.zero_grad(set_to_none=True)
    step_is_bad = False
    for i, (images, labels) in enumerate(bar, start=state.batches):
        images, targets = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if batch_mix is not None:
            images, targets = batch_mix(images, targets)
        with autocast(device, dtype):
            logits = model(images)
        loss = classification_loss(logits.float(), targets, config.train.label_smoothing)
        loss_value = loss.item()
        if math.isfinite(loss_value):
            scaler.scale(loss / accum).backward()
            state.loss_sum += loss_value * len(images)
            state.seen += len(images)
        else:
            step_is_bad = True  # no backward: it would spread NaN/inf into every gradient
        fresh += len(images)
        state.batches = i + 1
        last_micro_batch = (i + 1) % accum == 0 or i + 1 == len(loader)
        if last_micro_batch:
            stepped = not step_is_bad and optimizer_step(model, optimizer, scaler, config.train.grad_clip)
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()  # after a skipped step too, so the schedule stays aligned with the epochs
            global_step += 1
            step_is_bad = False
            state.skipped_steps += not stepped
            state.bad_in_a_row = 0 if stepped else state.bad_in_a_row + 1
            if state.bad_in_a_row >= config.train.max_bad_steps:
                raise diverged(run_dir, epoch, global_step, state.bad_in_a_row)
        rate = fresh / (time.perf_counter() - start)
        lr = optimizer.param_groups[0]["lr"]
        bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}", img_s=f"{rate:.0f}")
        if last_micro_batch and global_step % config.train.log_every == 0:
            log.scalars({"train/loss": loss_value, "train/lr": lr, "train/img_per_s": rate}, global_step)
        # Mid-epoch checkpoints only at optimizer-step boundaries: no half-accumulated gradients to lose.
        periodic = every > 0 and global_step % every == 0 and i + 1 < len(loader)  # the epoch's own follows
        if last_micro_batch and (periodic or stop.received):
            save_last(epoch, global_step, {}, state)
            if stop.received:
                raise interrupted(stop.received, run_dir, f"epoch {epoch + 1}, batch {i + 1}/{len(loader)}", global_step)
    elapsed = time.perf_counter() - start
    row = {"epoch": epoch + 1, "step": global_step, "train_loss": state.loss_sum / max(state.seen, 1),
           "lr": optimizer.param_groups[0]["lr"], "train_img_per_s": fresh / elapsed, "epoch_s": elapsed,
           "skipped_steps": state.skipped_steps}
    return row, global_step, EpochState(bad_in_a_row=state.bad_in_a_row)


def optimizer_step(model: nn.Module, optimizer, scaler, grad_clip: float) -> bool:
    """Clip and step; False (no update) when the gradient norm is not finite. With fp16 the GradScaler
    skips such steps by itself and lowers its scale, a normal part of loss scaling: not counted as bad."""
    scaler.unscale_(optimizer)
    if grad_clip > 0:
        norm = nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    else:
        norm = nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    if not scaler.is_enabled() and not torch.isfinite(norm):
        return False
    scaler.step(optimizer)
    scaler.update()
    return True


def use_config_lr(optimizer, scheduler, lr: float) -> None:
    """On resume the config's lr wins over the stored one, so a diverged run can go on with a lower
    train.lr. With the same lr this recomputes exactly the stored values (as LambdaLR does)."""
    scheduler.base_lrs = [lr] * len(optimizer.param_groups)
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas, strict=True):
        group["initial_lr"], group["lr"] = lr, lr * factor(scheduler.last_epoch)


def diverged(run_dir: Path, epoch: int, global_step: int, bad_steps: int) -> DivergenceError:
    last = run_dir / "checkpoints" / "last.safetensors"
    advice = (f"the last good checkpoint {last} is intact (skipped steps never change the weights): resume it "
              f"with train.resume={run_dir} and a lower train.lr" if last.is_file()
              else "no checkpoint was written yet: start again with a lower train.lr")
    return DivergenceError(f"training diverged at epoch {epoch + 1}, step {global_step}: {bad_steps} optimizer "
                           f"steps in a row had a non-finite loss or gradient norm and were skipped; {advice}")


def interrupted(signal_name: str, run_dir: Path, where: str, global_step: int) -> TrainingInterrupted:
    return TrainingInterrupted(f"{signal_name} received: stopped at {where} (step {global_step}) and wrote "
                               f"{run_dir / 'checkpoints' / 'last.safetensors'}; continue with train.resume={run_dir}")


def _epoch_line(row: dict[str, Any], epochs: int) -> str:
    line = f"epoch {row['epoch']}/{epochs}  loss {row['train_loss']:.4f}  lr {row['lr']:.2e}  {row['train_img_per_s']:.0f} img/s"
    if "val_top1" in row:
        line += f"  val top-1 {row['val_top1']:.2f}%"
    return line


def finish(run_dir: Path, config: Config, model: nn.Module, device, dtype, progress: bool) -> RunResult:
    """Score the test split once, with the best-validation weights (or the last ones when the
    dataset has no validation split)."""
    ckpt_dir = run_dir / "checkpoints"
    chosen = ckpt_dir / "best.safetensors" if (ckpt_dir / "best.safetensors").is_file() else ckpt_dir / "last.safetensors"
    checkpoint = load_checkpoint(chosen)
    load_model_state(model, checkpoint.model_state, str(chosen))
    val_metrics = checkpoint.metrics.get("val")
    test_metrics = None
    if config.data.test:
        predictions = predict_loader(model, eval_loader(config, "test", device), device, dtype, "test", progress)
        test_metrics = classification_metrics(predictions.logits, predictions.labels)
        summary = {"checkpoint": str(chosen), "epoch": checkpoint.epoch, "val": val_metrics, "test": test_metrics,
                   "config": to_dict(config)}
        atomic_write_text(run_dir / "test_metrics.json", json.dumps(summary, indent=1))
        print(f"test top-1 {test_metrics['top1']:.2f}%  top-5 {test_metrics['top5']:.2f}%  "
              f"mean class acc {test_metrics['mean_class_acc']:.2f}%  ({test_metrics['num_samples']} images, "
              f"checkpoint {chosen})")
    return RunResult(run_dir, chosen, val_metrics, test_metrics)
