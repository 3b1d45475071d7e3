"""The logits of a trained checkpoint on one split of its dataset: what the evaluation report and
temperature calibration both start from. The model comes from the checkpoint alone; only the images
come from the dataset, whose description can be replaced (e.g. the same dataset unpacked elsewhere).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from fgir.config import Config, ConfigError, DataConfig, apply_overrides
from fgir.data import ImageListDataset, build_dataset, build_loader, build_transform
from fgir.data.preflight import preflight
from fgir.engine.acceleration import compile_model
from fgir.engine.checkpoint import Checkpoint, restore_model
from fgir.engine.device import resolve_device, resolve_precision
from fgir.engine.evaluator import predict_loader


@dataclass
class ScoredSplit:
    path: Path  # the checkpoint file
    checkpoint: Checkpoint
    data: DataConfig  # the data section used (the checkpoint's, with overrides)
    dataset: ImageListDataset
    logits: torch.Tensor  # (N, C) float32, in dataset order
    labels: torch.Tensor  # (N,)
    paths: list[str]  # the N images scored (all of the split's, unless data.on_error=skip left some out)
    skipped: list[str]  # with data.on_error=skip: one message per unreadable image, naming it


def checkpoint_data(config: Config, overrides: DataConfig | list[str] | None) -> DataConfig:
    """The data section to evaluate on: the checkpoint's own, replaced or with `data.*` overrides."""
    if overrides is None:
        return config.data
    if isinstance(overrides, DataConfig):
        return overrides
    foreign = [item for item in overrides if not item.startswith("data.")]
    if foreign:
        raise ConfigError(f"only data.* keys can be overridden when evaluating a checkpoint (the model comes "
                          f"from the checkpoint), got: {', '.join(foreign)}")
    return apply_overrides(config, overrides).data


def score_split(
    checkpoint_path: str | os.PathLike,
    split: str,
    *,
    data_overrides: DataConfig | list[str] | None = None,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int | None = None,
    progress: bool = True,
    compile: bool = False,
    weights: str | os.PathLike | None = None,
) -> ScoredSplit:
    """Run a checkpoint (file or run directory) over `split` with the test transform.

    `data_overrides` replaces the checkpoint's data section (a DataConfig) or changes some of its
    keys (`data.key=value` items, e.g. `data.root=/elsewhere`); the image size must stay the model's.
    `compile` runs the model through torch.compile with frozen weights (faster on long splits; the
    first batches pay for the compilation). `weights`: the pretrained backbone of an adapter-only
    checkpoint, instead of the source it stores (see `restore_model`).
    """
    torch_device = resolve_device(device)
    model, checkpoint = restore_model(checkpoint_path, torch_device, weights=weights)
    path = checkpoint.path
    if compile:
        compile_model(model, frozen_weights=True)
    data = checkpoint_data(checkpoint.config, data_overrides)
    if data.image_size != checkpoint.config.data.image_size:
        raise ConfigError(
            f"data.image_size={data.image_size} but checkpoint {path} was trained at "
            f"{checkpoint.config.data.image_size} px; keep the checkpoint's image size"
        )

    dataset = build_dataset(data, split, build_transform(data, train=False))
    if dataset.num_classes != len(checkpoint.class_names):
        raise ConfigError(
            f"checkpoint {path} predicts {len(checkpoint.class_names)} classes but dataset '{data.name}' "
            f"(root {data.root}) has {dataset.num_classes}"
        )
    preflight(data, [split], progress=progress)
    loader = build_loader(dataset, batch_size=batch_size or data.eval_batch_size, train=False, seed=0,
                          num_workers=data.num_workers, pin_memory=torch_device.type == "cuda")
    dtype = resolve_precision(precision, torch_device)
    predictions = predict_loader(model, loader, torch_device, dtype, desc=split, progress=progress)
    # The loader is sequential: positions are dataset indices.
    positions = range(len(dataset)) if predictions.positions is None else predictions.positions.tolist()
    paths = [dataset.paths[i] for i in positions]
    if predictions.skipped:
        print(f"{split}: {len(predictions.skipped)} unreadable images skipped, {len(paths)} scored")
    return ScoredSplit(path, checkpoint, data, dataset, predictions.logits, predictions.labels, paths,
                       predictions.skipped)
