"""The training loop: read top to bottom.

config -> data + model -> epochs of (train, validate, checkpoint) -> test once with the
best-validation weights. Nothing here knows how a method works inside: a model maps images to
logits (and may offer an `extra_loss(logits, targets)` to add after a training forward). Model selection uses
the validation split only; the test split is scored exactly once.

Weight averaging: a weight EMA (`train.ema_decay`, fgir.engine.ema) follows every optimizer step
and is validated beside the raw weights; `train.average_top` keeps the best epochs and averages
them at the end (fgir.engine.averaging).

Safety: a step with a non-finite loss or gradient is skipped (counted in `skipped_steps`) and
`train.max_bad_steps` of them in a row raise DivergenceError. SIGTERM / SIGINT end the current
optimizer step, write a resumable `last` checkpoint that records the position inside the epoch and
raise TrainingInterrupted; `train.resume` then continues bit-identically (as after
`train.checkpoint_every_steps` checkpoints), without reading the batches already trained on.

Under torchrun every process runs this same loop on its shard of each batch (DDP); decisions that
must agree (skip a step, stop on a signal) are reduced across ranks, and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from fgir.config import Config, ConfigError, save_config, to_dict, with_absolute_paths
from fgir.data import build_batch_mix, build_dataset, build_loader, build_transform, dataset_info
from fgir.data.datasets import Batch
from fgir.data.preflight import preflight
from fgir.engine import averaging
from fgir.engine.acceleration import compile_model, set_grad_checkpointing, use_channels_last
from fgir.engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_state,
    read_backbone_identity,
    save_checkpoint,
)
from fgir.engine.device import autocast, resolve_device, resolve_precision
from fgir.engine.distributed import (
    Distributed,
    barrier,
    cleanup,
    gather_objects,
    init_distributed,
    process_device,
    sum_across_ranks,
    unwrap,
    wrap_model,
)
from fgir.engine.ema import WeightEma
from fgir.engine.evaluator import predict_split
from fgir.engine.longtail import class_frequencies
from fgir.engine.losses import class_weights, classification_loss
from fgir.engine.metrics import classification_metrics
from fgir.engine.optim import build_optimizer, build_scheduler, lr_at, with_batch_scaled_lr
from fgir.engine.resume_config import check_resume_changes, checkpoint_config, value
from fgir.engine.rng import rng_state, seed_everything, set_rng_state
from fgir.engine.run_header import run_header
from fgir.engine.run_log import RunLog
from fgir.errors import FgirError
from fgir.fileio import atomic_write_text
from fgir.methods import build_model
from fgir.methods.capabilities import extra_loss
from fgir.methods.checks import check_before_work
from fgir.models.trainable import trainable_report


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
    skips the batches already trained on and ends bit-identical to an uninterrupted one. The sums
    are this process's; a checkpoint stores them summed over all processes."""

    batches: int = 0  # batches of this epoch already trained on (per process)
    loss_sum: float = 0.0
    seen: int = 0
    skipped_steps: int = 0
    bad_in_a_row: int = 0  # carried over from epoch to epoch
    skipped_images: list[str] = field(default_factory=list)  # messages of unreadable images (data.on_error=skip)


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


@dataclass(kw_only=True)
class TrainContext:
    """What the epochs of one run share: built once in `train`, read by `train_one_epoch`."""

    config: Config
    model: nn.Module  # what runs forward: the DDP wrapper under torchrun
    net: nn.Module  # the model itself, whose weights are saved
    train_loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    batch_mix: Any
    device: torch.device
    dtype: torch.dtype | None
    ddp: Distributed
    log: RunLog
    run_dir: Path
    class_names: list[str]
    progress: bool
    stop: StopSignals
    loss_weight: torch.Tensor | None = None  # per-class weights (train.class_weights), on the device
    ema: WeightEma | None = None  # the weight EMA (train.ema_decay)
    served: str = "raw"  # the weights checkpoints serve: raw, or ema (train.ema_select, decided at validation)
    global_step: int = 0
    best_top1: float = -1.0

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"


WARMUP_SHARE_WARNED = 0.2  # a warm-up longer than this share of the run gets a warning


def check_schedule(config: Config, steps_per_epoch: int, train_images: int) -> str | None:
    """Refuse a run without optimizer steps, or whose warm-up outlasts it (the lr would never reach
    train.lr); a one-line warning when the warm-up takes more than a fifth of the run."""
    train = config.train
    total, warmup = steps_per_epoch * train.epochs, train.warmup_steps
    if not total:
        raise ConfigError(f"the training split has {train_images} images, fewer than one batch of "
                          f"data.batch_size={config.data.batch_size} (the last partial batch of an epoch is "
                          "dropped): no optimizer step to run; use a smaller data.batch_size")
    if warmup > total:
        peak = lr_at(total - 1, total, train)
        raise ConfigError(f"train.warmup_steps={warmup} is longer than the whole run, {total} optimizer "
                          f"steps ({train.epochs} epochs x {steps_per_epoch}): the lr would peak at "
                          f"{peak:.2g} instead of train.lr={train.lr:g}; use e.g. train.warmup_steps="
                          f"{max(1, total // 10)}, or more train.epochs")
    if warmup > WARMUP_SHARE_WARNED * total:
        return (f"warning: the warm-up (train.warmup_steps={warmup}) takes {warmup / total:.0%} of the run's "
                f"{total} optimizer steps")
    return None


def per_process_batch(batch_size: int, ddp: Distributed) -> int:
    if batch_size % ddp.world_size:
        raise ConfigError(f"data.batch_size={batch_size} is the global batch and must be divisible by the "
                          f"number of processes ({ddp.world_size})")
    return batch_size // ddp.world_size


SINGLE_PROCESS = Distributed()


def eval_loader(config: Config, split: str, device: torch.device, ddp: Distributed = SINGLE_PROCESS) -> DataLoader:
    """The `split` with the test transform, in dataset order: validation and test read data alike.
    Under torchrun each process gets a shard (see fgir.engine.evaluator.predict_split)."""
    dataset = build_dataset(config.data, split, build_transform(config.data, train=False))
    return build_loader(dataset, batch_size=config.data.eval_batch_size, train=False, seed=config.train.seed,
                        num_workers=config.data.num_workers, pin_memory=device.type == "cuda",
                        rank=ddp.rank, world_size=ddp.world_size)


def plan_run_dir(config: Config) -> Path:
    """The run directory: the one to resume (whose checkpoint's config must allow the changes the
    config makes, see fgir.engine.resume_config), or a new one. Nothing is created here: a run
    folder appears only once the run starts (`start_run_dir`)."""
    if config.train.resume:
        run_dir = Path(config.train.resume)
        last = run_dir / "checkpoints" / "last.safetensors"
        if not last.is_file():
            raise CheckpointError(f"train.resume={run_dir}: no checkpoints/last.safetensors to resume from")
        check_resume_changes(checkpoint_config(last), config, run_dir)
        return run_dir
    name = config.train.run_name or f"{config.data.name}-{config.model.method}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = Path(config.train.output_dir) / name
    if (run_dir / "checkpoints" / "last.safetensors").exists():
        raise FileExistsError(f"{run_dir} already holds a run; resume it with train.resume={run_dir} or pick "
                              "another train.run_name")
    return run_dir


# What a run writes into its folder (RunLog's files included).
RUN_OUTPUTS = ("config.yaml", "trainable_params.json", "metrics.json", "metrics.csv", "skipped_images.json",
               "test_metrics.json", "tb", "wandb", "checkpoints", "README.md")


def start_run_dir(run_dir: Path, config: Config) -> None:
    """Create the run folder and write its config, once the data, the model and (when resuming) the
    checkpoint are known to fit. The remains of a run that ended before its first `last`
    checkpoint hold nothing to resume: a new run replaces them."""
    if not config.train.resume:
        discard_run_outputs(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(run_dir)
    # config.yaml describes the run, not how this call reached it: with train.resume in it, training
    # from the file again (a new run_name, another seed) would silently continue this run instead.
    save_config(replace(config, train=replace(config.train, resume=None)), run_dir / "config.yaml")


def discard_run_outputs(run_dir: Path) -> None:
    """Remove what a run writes, then the folder if nothing else is left in it."""
    remove_stale_temporaries(run_dir)
    for name in RUN_OUTPUTS:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # missing, or holding files that are not a run's
        run_dir.rmdir()


def remove_stale_temporaries(run_dir: Path) -> None:
    """A process killed while writing leaves its temporary file (fgir.fileio.atomic_path names them
    `.<name>.*.tmp`); nothing reads them, but a checkpoint's can weigh gigabytes."""
    for folder in (run_dir, run_dir / "checkpoints", run_dir / "checkpoints" / averaging.TOP_DIR):
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def _shared_run_dir(config: Config, ddp: Distributed) -> Path:
    """Rank 0 names the run directory; the others take its answer, error included."""
    outcome: Path | Exception | None = None
    if ddp.is_main:
        try:
            outcome = plan_run_dir(config)
        except (FgirError, FileExistsError) as err:
            outcome = err
    outcome = gather_objects(outcome, ddp)[0]  # type: ignore[assignment]
    if isinstance(outcome, Exception):
        raise outcome
    return outcome  # type: ignore[return-value]


def init_weights_from(net: nn.Module, source: str, new_head: bool) -> list[str]:
    """Load the model weights of another run (`train.init_from`). With `new_head`, tensors whose
    shape differs only where the class count differs keep their fresh initialisation; returns them."""
    checkpoint = load_checkpoint(source)
    state, own = dict(checkpoint.served_state), net.state_dict()
    fresh = []
    if new_head:
        theirs = len(checkpoint.class_names)
        for key in sorted(own.keys() & state.keys()):
            a, b = tuple(state[key].shape), tuple(own[key].shape)
            if a != b and len(a) == len(b) and all(x == y or x == theirs for x, y in zip(a, b, strict=True)):
                state[key] = own[key]
                fresh.append(key)
    try:
        load_model_state(net, state, f"train.init_from={checkpoint.path}", checkpoint.backbone)
    except CheckpointError as err:
        hint = "" if new_head else "; to start the classification head afresh set train.init_new_head=true"
        raise CheckpointError(f"{err}{hint}") from None
    return fresh


def train(config: Config, progress: bool = True, stop_after_epochs: int | None = None) -> RunResult:
    """Run (or resume) the recipe. `stop_after_epochs` ends this call early, e.g. to fit a job's time
    limit; the schedule still spans `train.epochs` and `train.resume` continues the run later.
    Under torchrun (WORLD_SIZE > 1) this joins the process group and trains with DDP.
    Paths are made absolute first, so the saved config and checkpoints work from any folder."""
    config = with_absolute_paths(config)
    check_before_work(config)
    device = resolve_device(config.train.device)
    ddp = init_distributed(device)
    try:
        return _train(config, progress and ddp.is_main, stop_after_epochs, process_device(device, ddp), ddp)
    finally:
        if ddp.owns_group:
            cleanup()


def _train(config: Config, progress: bool, stop_after_epochs: int | None, device: torch.device,
           ddp: Distributed) -> RunResult:
    config, lr_note = with_batch_scaled_lr(config)
    if lr_note and ddp.is_main:
        print(lr_note)
    seed_everything(config.train.seed + ddp.rank)  # rank 0 draws as a single process would
    dtype = resolve_precision(config.train.precision, device)
    run_dir = _shared_run_dir(config, ddp)  # named, not created: nothing is written before the run starts

    # Data. The class count comes from the dataset description, never from one split's labels.
    num_classes, class_names = dataset_info(config.data)
    train_set = build_dataset(config.data, "train", build_transform(config.data, train=True))
    train_loader = build_loader(train_set, batch_size=per_process_batch(config.data.batch_size, ddp), train=True,
                                seed=config.train.seed, num_workers=config.data.num_workers,
                                pin_memory=device.type == "cuda", rank=ddp.rank, world_size=ddp.world_size,
                                repeats=config.data.repeated_aug or 1)
    val_loader = eval_loader(config, "val", device, ddp) if config.data.val else None
    batch_mix = build_batch_mix(config.data, num_classes)
    steps_per_epoch = math.ceil(len(train_loader) / config.train.grad_accum_steps)
    warmup_warning = check_schedule(config, steps_per_epoch, len(train_set))
    if ddp.is_main:
        sizes = {"train": len(train_set), "val": len(val_loader.dataset) if val_loader else 0,
                 "test": len(build_dataset(config.data, "test", None)) if config.data.test else 0}
        print(run_header(config, device, dtype, ddp.world_size, class_names, sizes, steps_per_epoch, run_dir))
        if warmup_warning:
            print(warmup_warning, file=sys.stderr)
    preflight(config.data, progress=progress, echo=ddp.is_main)  # every split's images, before any work

    # Model, optimizer, schedule (per optimizer step). A resumed run takes every weight from its
    # checkpoint, so it does not fetch pretrained weights again (it may run offline); neither does
    # a run initialised from another run's weights.
    source = run_dir / "checkpoints" / "last.safetensors" if config.train.resume else config.train.init_from
    # ... unless that checkpoint is adapter-only: its frozen backbone comes from the pretrained weights.
    pretrained = False if source and read_backbone_identity(source) is None else None
    net = build_model(config.model, num_classes, config.data.image_size, pretrained=pretrained)
    if config.train.init_from and not config.train.resume:
        fresh = init_weights_from(net, config.train.init_from, config.train.init_new_head)
        if ddp.is_main:
            print(f"initialised from {config.train.init_from}" + (f"; started afresh: {', '.join(fresh)}" if fresh else ""))
    net = net.to(device)
    if config.train.channels_last:
        use_channels_last(net)
    if config.train.grad_checkpointing and not set_grad_checkpointing(net):
        raise ConfigError(f"train.grad_checkpointing=true but model.method='{config.model.method}' has no "
                          "backbone that supports activation checkpointing")
    if config.train.compile:
        compile_model(net)  # in place: state_dict keys, and so checkpoints, stay as they are
    model = wrap_model(net, device, ddp)
    net = unwrap(model)
    optimizer = build_optimizer(net, config.train)
    scheduler = build_scheduler(optimizer, steps_per_epoch * config.train.epochs, config.train)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    ema = WeightEma(net, config.train.ema_decay, config.train.ema_warmup) if config.train.ema_decay else None

    weight = class_weights(class_frequencies(train_set.labels, num_classes), config.train.class_weights)
    ctx = TrainContext(config=config, model=model, net=net, train_loader=train_loader, optimizer=optimizer,
                       scheduler=scheduler, scaler=scaler, batch_mix=batch_mix, device=device, dtype=dtype, ddp=ddp,
                       log=RunLog(run_dir, config, writes=ddp.is_main), run_dir=run_dir, class_names=class_names,
                       progress=progress, stop=StopSignals(),
                       loss_weight=None if weight is None else weight.to(device), ema=ema,
                       served="ema" if ema is not None and config.train.ema_select == "ema" else "raw")
    start_epoch, epoch_state, resume_rng = 0, EpochState(), None
    if config.train.resume:
        start_epoch, epoch_state, resume_rng = resume(ctx)

    try:
        # Everything fits (data, model, schedule, the checkpoint to resume): the run starts here.
        if ddp.is_main:
            start_run_dir(run_dir, config)
            report_trainable(net, run_dir)
        ctx.log.start(ctx.global_step)
        end_epoch = config.train.epochs if stop_after_epochs is None else min(config.train.epochs, start_epoch + stop_after_epochs)
        with ctx.stop:
            for epoch in range(start_epoch, end_epoch):
                row, epoch_state = train_one_epoch(ctx, epoch, epoch_state, resume_rng)
                resume_rng = None
                evaluate_now = val_loader is not None and ((epoch + 1) % config.train.eval_every == 0
                                                           or epoch + 1 == config.train.epochs)
                if evaluate_now:
                    validate_epoch(ctx, val_loader, epoch + 1, row)
                ctx.log.epoch(row, ctx.global_step)
                if ddp.is_main:
                    print(_epoch_line(row, config.train.epochs))
                save_last(ctx, epoch + 1, row, epoch_state)
                if agreed_stop(ctx):  # arrived during validation: the epoch's checkpoint is already written
                    raise interrupted(ctx.stop.received or "a signal", run_dir, position(epoch + 1, 0, 0),
                                      ctx.global_step)
    finally:
        ctx.log.close()
        if ddp.is_main and not (ctx.ckpt_dir / "last.safetensors").is_file():
            discard_run_outputs(run_dir)  # ended before its first checkpoint: nothing to resume, no stub left
    barrier(ddp)  # rank 0's checkpoints are complete before anyone reads them
    if end_epoch < config.train.epochs:
        if ddp.is_main:
            print(f"stopped after epoch {end_epoch}/{config.train.epochs}; continue with train.resume={run_dir}")
        return RunResult(run_dir, ctx.ckpt_dir / "last.safetensors", None, None)
    if config.train.average_top:
        write_average(ctx, val_loader)
    return finish(ctx)


def validate_epoch(ctx: TrainContext, loader: DataLoader, epoch: int, row: dict[str, Any]) -> None:
    """Score the epoch's weights (and their EMA, `val_ema_*`) on the validation split; the best
    checkpoint and the kept best epochs (train.average_top) follow the served weights' top-1."""
    config = ctx.config
    scores = {"raw": evaluate(ctx, loader, "val")}
    row.update(val_columns("val", scores["raw"]))
    if ctx.ema is not None:
        with ctx.ema.applied(ctx.net):
            scores["ema"] = evaluate(ctx, loader, "val")
        row.update(val_columns("val_ema", scores["ema"]))
        ctx.served = served_weights(config.train.ema_select, scores["raw"]["top1"], scores["ema"]["top1"])
    val = scores[ctx.served]
    metrics = {"val": val} if ctx.ema is None else {"val": val, "val_raw": scores["raw"], "val_ema": scores["ema"]}
    if val["top1"] > ctx.best_top1 and config.train.select == "val":
        ctx.best_top1 = val["top1"]
        if ctx.ddp.is_main:
            save_checkpoint(ctx.ckpt_dir / "best.safetensors", ctx.net, config, ctx.class_names, epoch=epoch,
                            global_step=ctx.global_step, metrics=metrics, **ema_entries(ctx))
    n = config.train.average_top
    if n and ctx.ddp.is_main and averaging.enters_top(ctx.ckpt_dir, n, val["top1"]):
        with served_weights_in(ctx):
            save_checkpoint(averaging.top_path(ctx.ckpt_dir, epoch), ctx.net, config, ctx.class_names,
                            epoch=epoch, global_step=ctx.global_step, metrics={"val": val})
        averaging.prune(ctx.ckpt_dir, n)


def val_columns(prefix: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics-row entries of one validation pass: `<prefix>_top1`, ... (skipped images counted)."""
    columns = {f"{prefix}_{k}": v for k, v in metrics.items() if k not in ("num_samples", "skipped_images")}
    if metrics["skipped_images"]:
        columns[f"{prefix}_skipped_images"] = len(metrics["skipped_images"])
    return columns


def served_weights(ema_select: str, raw_top1: float, ema_top1: float) -> str:
    """train.ema_select: raw, ema, or best (the EMA only when its top-1 is higher)."""
    if ema_select == "best":
        return "ema" if ema_top1 > raw_top1 else "raw"
    return ema_select


def served_weights_in(ctx: TrainContext) -> contextlib.AbstractContextManager:
    """Inside it the model holds the weights the run serves (its EMA with ctx.served=ema)."""
    return ctx.ema.applied(ctx.net) if ctx.ema is not None and ctx.served == "ema" else contextlib.nullcontext()


def ema_entries(ctx: TrainContext) -> dict[str, Any]:
    """save_checkpoint's EMA arguments: the EMA beside the weights, and which of the two is served."""
    return {} if ctx.ema is None else {"ema_state": ctx.ema.state_dict(), "served": ctx.served}


def write_average(ctx: TrainContext, val_loader: DataLoader) -> None:
    """checkpoints/averaged.safetensors: the mean of the kept best epochs (fgir.engine.averaging),
    scored on the validation split. Every process averages the same files; rank 0 writes."""
    state, kept = averaging.average_kept(ctx.ckpt_dir)
    source = load_checkpoint(kept[0].path)
    load_model_state(ctx.net, state, f"the mean of {len(kept)} epochs", source.backbone)
    val = evaluate(ctx, val_loader, "val")
    epochs = [k.epoch for k in kept]
    if ctx.ddp.is_main:
        save_checkpoint(ctx.ckpt_dir / averaging.AVERAGED, ctx.net, ctx.config, ctx.class_names,
                        epoch=ctx.config.train.epochs, global_step=ctx.global_step,
                        metrics={"val": val, "averaged_epochs": epochs})
        print(f"averaged epochs {', '.join(map(str, epochs))}: val top-1 {val['top1']:.2f}% "
              f"(best single {kept[0].top1:.2f}%)")
    barrier(ctx.ddp)


def report_trainable(net: nn.Module, run_dir: Path) -> None:
    """trainable_params.json in every run; printed when part of the model is frozen."""
    report = trainable_report(net)
    if report.trainable < report.total:
        print(report.format())
    atomic_write_text(run_dir / "trainable_params.json", json.dumps(report.to_dict(), indent=1))


def resume(ctx: TrainContext) -> tuple[int, EpochState, dict[str, Any] | None]:
    """Restore the `last` checkpoint: weights, optimizer, schedule, scaler, RNG and the position
    inside the epoch. Returns (first epoch to run, the epoch's state, the RNG to set after its
    iterator is created when resuming mid-epoch)."""
    last = load_checkpoint(ctx.ckpt_dir / "last.safetensors", with_train_state=True)
    state = last.train_state
    stored = EpochState(**{**state.get("epoch_state", {}), "bad_in_a_row": 0})  # a fresh count
    where = position(last.epoch, stored.batches, len(ctx.train_loader))
    begun = last.epoch + (stored.batches > 0)
    if ctx.config.train.epochs < begun:
        raise ConfigError(f"train.epochs={ctx.config.train.epochs} but the run {ctx.run_dir} is already at "
                          f"{where}: give train.epochs={begun} or more")
    if ctx.class_names != last.class_names:
        ours, theirs = ctx.class_names, last.class_names
        raise CheckpointError(f"train.resume={ctx.run_dir}: the dataset at data.root={ctx.config.data.root} "
                              f"has {len(ours)} classes ({', '.join(ours[:3])}, ...), the run was trained on "
                              f"{len(theirs)} ({', '.join(theirs[:3])}, ...)")
    load_model_state(ctx.net, last.model_state, str(last.path), last.backbone)
    if ctx.ema is not None:
        ctx.ema.load_state_dict(last.ema_state, str(last.path))
        ctx.served = last.served
    if ctx.config.train.average_top and ctx.ddp.is_main:
        averaging.forget_after(ctx.ckpt_dir, last.epoch)
    ctx.optimizer.load_state_dict(state["optimizer"])
    ctx.scheduler.load_state_dict(state["scheduler"])
    if state["scaler"]:  # empty when saved without fp16 loss scaling (train.precision may change)
        ctx.scaler.load_state_dict(state["scaler"])
    stored_lr = ctx.optimizer.param_groups[0]["lr"]
    use_config_lr(ctx.optimizer, ctx.scheduler, ctx.config.train.lr)
    rngs = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
    rng = rngs[ctx.ddp.rank % len(rngs)]
    set_rng_state(rng)
    ctx.global_step, ctx.best_top1 = last.global_step, state["best_top1"]
    # The stored sums cover every process: rank 0 carries them on, the others start from zero.
    epoch_state = stored if ctx.ddp.is_main else EpochState(batches=stored.batches, skipped_steps=stored.skipped_steps)
    if ctx.ddp.is_main:
        print(f"resumed {ctx.run_dir} at {where} (step {last.global_step})")
        changed = check_resume_changes(last.config, ctx.config, ctx.run_dir)
        if changed:
            print("changed on resume: " + "; ".join(
                f"{key} {value(last.config, key)} -> {value(ctx.config, key)}" for key in changed))
        lr = ctx.optimizer.param_groups[0]["lr"]
        if not math.isclose(lr, stored_lr, rel_tol=1e-9):
            print(f"lr at step {last.global_step}: {stored_lr:.3g} -> {lr:.3g} (the schedule of train.lr="
                  f"{ctx.config.train.lr:g} over train.epochs={ctx.config.train.epochs})")
    return last.epoch, epoch_state, rng if stored.batches else None


def save_last(ctx: TrainContext, epoch: int, metrics: dict[str, Any], state: EpochState) -> None:
    """The resumable `last` checkpoint. `epoch` counts finished epochs; a mid-epoch checkpoint also
    says how far the next one got. Every rank takes part (RNG states and sums are gathered)."""
    rngs = gather_objects(rng_state(), ctx.ddp)
    totals = merged(state, ctx.ddp)
    if not ctx.ddp.is_main:
        return
    train_state = {"optimizer": ctx.optimizer.state_dict(), "scheduler": ctx.scheduler.state_dict(),
                   "scaler": ctx.scaler.state_dict(), "rng": rngs, "best_top1": ctx.best_top1,
                   "epoch_state": asdict(totals)}
    save_checkpoint(ctx.ckpt_dir / "last.safetensors", ctx.net, ctx.config, ctx.class_names, epoch=epoch,
                    global_step=ctx.global_step, metrics=metrics, train_state=train_state, **ema_entries(ctx))


def merged(state: EpochState, ddp: Distributed) -> EpochState:
    """The epoch state with sums and skipped images over all processes."""
    if not ddp.enabled:
        return state
    loss_sum, seen = sum_across_ranks([state.loss_sum, state.seen], ddp)
    skipped = [m for messages in gather_objects(state.skipped_images, ddp) for m in messages]  # type: ignore[attr-defined]
    return EpochState(state.batches, loss_sum, int(seen), state.skipped_steps, state.bad_in_a_row, skipped)


def agreed_stop(ctx: TrainContext) -> bool:
    """Did any process receive SIGTERM / SIGINT? All must stop at the same step."""
    return sum_across_ranks([float(ctx.stop.received is not None)], ctx.ddp)[0] > 0


def evaluate(ctx: TrainContext, loader: DataLoader, split: str) -> dict[str, Any]:
    """Metrics over the whole split, every image counted once across processes. With
    data.on_error=skip unreadable images are reported, with the number actually scored."""
    predictions = predict_split(ctx.net, loader, ctx.device, ctx.dtype, ctx.ddp, split, ctx.progress)
    metrics = classification_metrics(predictions.logits, predictions.labels)
    metrics["skipped_images"] = predictions.skipped
    if predictions.skipped and ctx.ddp.is_main:
        print(f"{split}: {len(predictions.skipped)} unreadable images skipped, {metrics['num_samples']} scored:\n  "
              + "\n  ".join(predictions.skipped))
    return metrics


def train_one_epoch(ctx: TrainContext, epoch: int, state: EpochState,
                    resume_rng: dict[str, Any] | None) -> tuple[dict[str, Any], EpochState]:
    config, loader = ctx.config, ctx.train_loader
    ctx.model.train()
    accum, every = config.train.grad_accum_steps, config.train.checkpoint_every_steps
    fresh, start = 0, time.perf_counter()  # images trained on by this call, for the rate
    # The epoch's order is a pure function of (seed, epoch): a run resumed mid-epoch starts the
    # sampler after the batches already trained on, which are never read again.
    loader.sampler.set_epoch(epoch, skip=state.batches * loader.batch_size)
    batches = iter(loader)
    if resume_rng is not None:
        set_rng_state(resume_rng)  # only now: creating the iterator draws from the RNG
    bar = tqdm(batches, total=len(loader), initial=state.batches, desc=f"epoch {epoch + 1}/{config.train.epochs}",
               leave=False, disable=not ctx.progress)
    ctx.optimizer.zero_grad(set_to_none=True)
    step_is_bad = False
    for i, batch in enumerate(bar, start=state.batches):
        if isinstance(batch, Batch):
            images, labels = batch.images, batch.labels
            state.skipped_images += [s.message for s in batch.skipped]
        else:
            images, labels = batch
        last_micro_batch = (i + 1) % accum == 0 or i + 1 == len(loader)
        loss_value = forward_backward(ctx, images, labels, sync=last_micro_batch)
        if loss_value is None:
            pass  # every image of the batch was unreadable
        elif math.isfinite(loss_value):
            state.loss_sum += loss_value * len(images)
            state.seen += len(images)
        else:
            step_is_bad = True
        fresh += len(images)
        state.batches = i + 1
        stop_now = False
        if last_micro_batch:
            stepped, stop_now = step(ctx, step_is_bad)
            step_is_bad = False
            state.skipped_steps += not stepped
            state.bad_in_a_row = 0 if stepped else state.bad_in_a_row + 1
            if state.bad_in_a_row >= config.train.max_bad_steps:
                raise diverged(ctx.run_dir, epoch, ctx.global_step, state.bad_in_a_row)
        rate = fresh / (time.perf_counter() - start)
        lr = ctx.optimizer.param_groups[0]["lr"]
        if loss_value is not None:
            bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}", img_s=format_rate(rate))
        if last_micro_batch and ctx.global_step % config.train.log_every == 0 and loss_value is not None:
            ctx.log.scalars({"train/loss": loss_value, "train/lr": lr, "train/img_per_s": rate}, ctx.global_step)
        # Mid-epoch checkpoints only at optimizer-step boundaries: no half-accumulated gradients to lose.
        periodic = every > 0 and ctx.global_step % every == 0 and i + 1 < len(loader)  # the epoch's own follows
        if last_micro_batch and (periodic or stop_now):
            save_last(ctx, epoch, {}, state)
            if stop_now:
                raise interrupted(ctx.stop.received or "a signal", ctx.run_dir,
                                  position(epoch, i + 1, len(loader)), ctx.global_step)
    elapsed = time.perf_counter() - start
    totals = merged(state, ctx.ddp)
    row = {"epoch": epoch + 1, "step": ctx.global_step, "train_loss": totals.loss_sum / max(totals.seen, 1),
           "lr": ctx.optimizer.param_groups[0]["lr"], "train_img_per_s": fresh * ctx.ddp.world_size / elapsed,
           "epoch_s": elapsed, "skipped_steps": state.skipped_steps, "skipped_images": len(totals.skipped_images)}
    if totals.skipped_images:
        ctx.log.skipped_images(epoch + 1, totals.skipped_images)
        if ctx.ddp.is_main:
            print(f"epoch {epoch + 1}: {len(totals.skipped_images)} unreadable training images skipped "
                  f"(data.on_error=skip):\n  " + "\n  ".join(totals.skipped_images))
    return row, EpochState(bad_in_a_row=state.bad_in_a_row)


def forward_backward(ctx: TrainContext, images: torch.Tensor, labels: torch.Tensor, sync: bool) -> float | None:
    """One micro-batch: forward, loss (+ the model's extra loss, if it has one), backward.
    Returns the loss value (non-finite ones are not back-propagated), None for an empty batch.
    `sync=False` lets DDP accumulate gradients locally until the step's last micro-batch."""
    accum = ctx.config.train.grad_accum_steps
    syncing = ctx.model.no_sync() if ctx.ddp.enabled and not sync else contextlib.nullcontext()
    with syncing:
        if not len(images):
            if ctx.ddp.enabled:  # the other processes wait for this one's gradients: send zeros
                size = ctx.config.data.image_size
                (ctx.model(torch.zeros(1, 3, size, size, device=ctx.device)).sum() * 0.0).backward()
            return None
        images, targets = images.to(ctx.device, non_blocking=True), labels.to(ctx.device, non_blocking=True)
        if ctx.batch_mix is not None:
            images, targets = ctx.batch_mix(images, targets)
        with autocast(ctx.device, ctx.dtype):
            logits = ctx.model(images)
        loss = classification_loss(logits.float(), targets, ctx.config.train.label_smoothing, ctx.loss_weight)
        extra = extra_loss(ctx.net, logits, targets)
        if extra is not None:
            loss = loss + extra.float()
        loss_value = loss.item()
        if math.isfinite(loss_value):
            ctx.scaler.scale(loss / accum).backward()
        elif ctx.ddp.enabled:
            # The other processes wait for this one's gradients: NaN ones make every process see a
            # non-finite norm and skip the step together. Alone, no backward: it would only spread NaN.
            (loss * math.nan).backward()
    return loss_value


def step(ctx: TrainContext, step_is_bad: bool) -> tuple[bool, bool]:
    """End of an optimizer step: update (unless the step is bad), advance the schedule. Returns
    (the weights were updated, a stop signal arrived), agreed by all processes."""
    stepped = False if step_is_bad and not ctx.ddp.enabled else optimizer_step(ctx.net, ctx.optimizer, ctx.scaler,
                                                                               ctx.config.train.grad_clip)
    stepped = stepped and not step_is_bad
    stop_now = ctx.stop.received is not None
    if ctx.ddp.enabled:
        bad, stops = sum_across_ranks([float(not stepped), float(stop_now)], ctx.ddp)
        stepped, stop_now = bad == 0, stops > 0
    ctx.optimizer.zero_grad(set_to_none=True)
    ctx.scheduler.step()  # after a skipped step too, so the schedule stays aligned with the epochs
    ctx.global_step += 1
    if ctx.ema is not None:  # after every optimizer step, as timm's train.py updates its ModelEmaV3
        ctx.ema.update(ctx.net, ctx.global_step)
    return stepped, stop_now


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
    scheduler.base_lrs = [lr * group.get("lr_scale", 1.0) for group in optimizer.param_groups]
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["initial_lr"], group["lr"] = base, base * factor(scheduler.last_epoch)


def diverged(run_dir: Path, epoch: int, global_step: int, bad_steps: int) -> DivergenceError:
    last = run_dir / "checkpoints" / "last.safetensors"
    advice = (f"the last good checkpoint {last} is intact (skipped steps never change the weights): resume it "
              f"with train.resume={run_dir} and a lower train.lr" if last.is_file()
              else "no checkpoint was written yet: start again with a lower train.lr")
    return DivergenceError(f"training diverged at epoch {epoch + 1}, step {global_step}: {bad_steps} optimizer "
                           f"steps in a row had a non-finite loss or gradient norm and were skipped; {advice}")


def position(epochs_done: int, batches: int, batches_per_epoch: int) -> str:
    """A place in the run as a person counts it (1-based), the same in the stop and resume messages:
    `epochs_done` epochs finished and `batches` batches into the next one."""
    if batches:
        return f"epoch {epochs_done + 1}, batch {batches}/{batches_per_epoch}"
    return f"the end of epoch {epochs_done}"


def interrupted(signal_name: str, run_dir: Path, where: str, global_step: int) -> TrainingInterrupted:
    return TrainingInterrupted(f"{signal_name} received: stopped at {where} (step {global_step}) and wrote "
                               f"{run_dir / 'checkpoints' / 'last.safetensors'}; continue with train.resume={run_dir}")


def format_rate(images_per_s: float) -> str:
    """Throughput to read at a glance: one decimal below 10 img/s (a slow CPU run is not "0")."""
    return f"{images_per_s:.1f}" if images_per_s < 10 else f"{images_per_s:.0f}"


def _epoch_line(row: dict[str, Any], epochs: int) -> str:
    line = (f"epoch {row['epoch']}/{epochs}  loss {row['train_loss']:.4f}  lr {row['lr']:.2e}  "
            f"{format_rate(row['train_img_per_s'])} img/s")
    if "val_top1" in row:
        line += f"  val top-1 {row['val_top1']:.2f}%"
    if "val_ema_top1" in row:
        line += f"  (EMA {row['val_ema_top1']:.2f}%)"
    return line


def finish(ctx: TrainContext) -> RunResult:
    """Score the test split once: with the best-validation weights (train.select=val, when there is a
    validation split), the last epoch's (train.select=last, as the papers report) or the mean of the
    best epochs (train.select=average); of a checkpoint with an EMA, the weights it serves."""
    config, run_dir = ctx.config, ctx.run_dir
    best, last = ctx.ckpt_dir / "best.safetensors", ctx.ckpt_dir / "last.safetensors"
    chosen = best if config.train.select == "val" and best.is_file() else last
    if config.train.select == "average":
        chosen = ctx.ckpt_dir / averaging.AVERAGED
    checkpoint = load_checkpoint(chosen)
    load_model_state(ctx.net, checkpoint.served_state, str(chosen), checkpoint.backbone)
    val_metrics = checkpoint.metrics.get("val")
    test_metrics = None
    if config.data.test:
        test_metrics = evaluate(ctx, eval_loader(config, "test", ctx.device, ctx.ddp), "test")
        if ctx.ddp.is_main:
            summary = {"checkpoint": str(chosen), "epoch": checkpoint.epoch, "val": val_metrics, "test": test_metrics,
                       "config": to_dict(config)}
            atomic_write_text(run_dir / "test_metrics.json", json.dumps(summary, indent=1))
            print(f"test top-1 {test_metrics['top1']:.2f}%  top-5 {test_metrics['top5']:.2f}%  "
                  f"mean class acc {test_metrics['mean_class_acc']:.2f}%  ({test_metrics['num_samples']} images, "
                  f"checkpoint {chosen})")
    return RunResult(run_dir, chosen, val_metrics, test_metrics)
