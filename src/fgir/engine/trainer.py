"""The training loop: read top to bottom.

config -> data + model -> epochs of (train, validate, checkpoint) -> test once with the
best-validation weights. Nothing here knows how a method works inside: a model maps images to
logits. Model selection uses the validation split only; the test split is scored exactly once.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn
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
from fgir.fileio import atomic_write_text
from fgir.models.factory import build_model


@dataclass
class RunResult:
    run_dir: Path
    checkpoint: Path  # the checkpoint the test split was scored with
    val_metrics: dict[str, Any] | None
    test_metrics: dict[str, Any] | None


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
    val_set = build_dataset(config.data, "val", build_transform(config.data, train=False)) if config.data.val else None
    loader_args = dict(seed=config.train.seed, num_workers=config.data.num_workers, pin_memory=device.type == "cuda")
    train_loader = build_loader(train_set, batch_size=config.data.batch_size, train=True, **loader_args)
    val_loader = (build_loader(val_set, batch_size=config.data.eval_batch_size, train=False, **loader_args)
                  if val_set is not None else None)
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
    if config.train.resume:
        last = load_checkpoint(run_dir / "checkpoints" / "last.safetensors", with_train_state=True)
        load_model_state(model, last.model_state, str(last.path))
        state = last.train_state
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        start_epoch, global_step, best_top1 = last.epoch, last.global_step, state["best_top1"]
        print(f"resumed {run_dir} at epoch {start_epoch} (step {global_step})")

    log = RunLog(run_dir, config)
    ckpt_dir = run_dir / "checkpoints"
    try:
        end_epoch = config.train.epochs if stop_after_epochs is None else min(config.train.epochs, start_epoch + stop_after_epochs)
        for epoch in range(start_epoch, end_epoch):
            train_loader.sampler.set_epoch(epoch)
            row, global_step = train_one_epoch(model, train_loader, optimizer, scheduler, scaler, batch_mix,
                                               config, device, dtype, epoch, global_step, log, progress)
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
            train_state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                           "scaler": scaler.state_dict(), "rng": rng_state(), "best_top1": best_top1}
            save_checkpoint(ckpt_dir / "last.safetensors", model, config, class_names, epoch=epoch + 1,
                            global_step=global_step, metrics=row, train_state=train_state)
    finally:
        log.close()
    if end_epoch < config.train.epochs:
        print(f"stopped after epoch {end_epoch}/{config.train.epochs}; continue with train.resume={run_dir}")
        return RunResult(run_dir, ckpt_dir / "last.safetensors", None, None)
    return finish(run_dir, config, model, device, dtype, progress)


def train_one_epoch(model, loader, optimizer, scheduler, scaler, batch_mix, config: Config, device, dtype,
                    epoch: int, global_step: int, log: RunLog, progress: bool) -> tuple[dict[str, Any], int]:
    model.train()
    accum = config.train.grad_accum_steps
    loss_sum, seen, start = 0.0, 0, time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.train.epochs}", leave=False, disable=not progress)
    optimizer.zero_grad(set_to_none=True)
    for i, (images, labels) in enumerate(bar):
        images, targets = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if batch_mix is not None:
            images, targets = batch_mix(images, targets)
        with autocast(device, dtype):
            logits = model(images)
        loss = classification_loss(logits.float(), targets, config.train.label_smoothing)
        scaler.scale(loss / accum).backward()
        last_micro_batch = (i + 1) % accum == 0 or i + 1 == len(loader)
        if last_micro_batch:
            if config.train.grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            global_step += 1
        loss_sum += loss.item() * len(images)
        seen += len(images)
        rate = seen / (time.perf_counter() - start)
        lr = optimizer.param_groups[0]["lr"]
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}", img_s=f"{rate:.0f}")
        if last_micro_batch and global_step % config.train.log_every == 0:
            log.scalars({"train/loss": loss.item(), "train/lr": lr, "train/img_per_s": rate}, global_step)
    elapsed = time.perf_counter() - start
    row = {"epoch": epoch + 1, "step": global_step, "train_loss": loss_sum / max(seen, 1),
           "lr": optimizer.param_groups[0]["lr"], "train_img_per_s": seen / elapsed, "epoch_s": elapsed}
    return row, global_step


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
        test_set = build_dataset(config.data, "test", build_transform(config.data, train=False))
        test_loader = build_loader(test_set, batch_size=config.data.eval_batch_size, train=False,
                                   seed=config.train.seed, num_workers=config.data.num_workers,
                                   pin_memory=device.type == "cuda")
        predictions = predict_loader(model, test_loader, device, dtype, "test", progress)
        test_metrics = classification_metrics(predictions.logits, predictions.labels)
        summary = {"checkpoint": str(chosen), "epoch": checkpoint.epoch, "val": val_metrics, "test": test_metrics,
                   "config": to_dict(config)}
        atomic_write_text(run_dir / "test_metrics.json", json.dumps(summary, indent=1))
        print(f"test top-1 {test_metrics['top1']:.2f}%  top-5 {test_metrics['top5']:.2f}%  "
              f"mean class acc {test_metrics['mean_class_acc']:.2f}%  ({test_metrics['num_samples']} images, "
              f"checkpoint {chosen})")
    return RunResult(run_dir, chosen, val_metrics, test_metrics)
