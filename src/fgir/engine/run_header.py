"""What `fgir train` prints before its first epoch: the method and its weights, the data, where and
in which precision it runs, the batch, how many steps, the schedule and the run folder."""

from __future__ import annotations

from pathlib import Path

import torch

from fgir.config import Config

PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16 with loss scaling"}


def weight_source(config: Config, run_dir: Path) -> str:
    if config.train.resume:
        return f"weights from {run_dir / 'checkpoints' / 'last.safetensors'}"
    if config.train.init_from:
        return f"weights from train.init_from={config.train.init_from}"
    if not config.model.pretrained:
        return "randomly initialised (model.pretrained=false)"
    if config.model.weights:
        return f"pretrained weights from {config.model.weights}"
    return "pretrained weights from the Hugging Face hub"


def run_header(config: Config, device: torch.device, dtype: torch.dtype | None, world_size: int,
               class_names: list[str], split_sizes: dict[str, int], steps_per_epoch: int, run_dir: Path) -> str:
    data, train = config.data, config.train
    images = ", ".join(f"{count:,} {split}" for split, count in split_sizes.items() if count)
    precision = PRECISION_NAMES[dtype] + (" (train.precision=auto)" if train.precision == "auto" else "")
    batch = f"{data.batch_size}"
    if world_size > 1:
        batch += f" ({data.batch_size // world_size} per process x {world_size} processes)"
    if train.grad_accum_steps > 1:
        batch += f", {train.grad_accum_steps} micro-batches per optimizer step"
    total = steps_per_epoch * train.epochs
    lines = [
        f"method   {config.model.method} on {config.model.backbone}, {weight_source(config, run_dir)}",
        f"data     {data.name} at {data.image_size} px: {len(class_names)} classes; {images} images",
        f"device   {device}, {precision}",
        f"batch    {batch}",
        f"steps    {steps_per_epoch:,} per epoch x {train.epochs} epochs = {total:,} optimizer steps",
        f"schedule {train.optimizer}, warm-up {train.warmup_steps:,} steps from {train.warmup_lr:g} to lr "
        f"{train.lr:g}, cosine to {train.min_lr:g}",
        f"run      {run_dir}" + (" (resumed)" if train.resume else ""),
    ]
    return "\n".join(lines)
