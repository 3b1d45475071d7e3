"""`fgir convert merge-lora`: a LoRA checkpoint -> a full `vit` checkpoint with the updates merged."""

from __future__ import annotations

import copy
import os
from pathlib import Path

from fgir.engine.checkpoint import restore_model, save_checkpoint
from fgir.models.peft.merge import merge_lora


def save_merged_lora(checkpoint: str | os.PathLike, output: str | os.PathLike,
                     weights: str | os.PathLike | None = None) -> Path:
    """Merge the LoRA checkpoint `checkpoint` (file or run directory) and save the result at `output`
    as a full checkpoint of method `vit`, with the same class names, progress and metrics. `weights`:
    the pretrained backbone the LoRA was trained on, if not where the checkpoint says."""
    model, source = restore_model(checkpoint, weights=weights)
    merged = merge_lora(model)
    config = copy.deepcopy(source.config)
    config.model.method = "vit"
    return save_checkpoint(output, merged, config, source.class_names, epoch=source.epoch,
                           global_step=source.global_step, metrics=source.metrics)
