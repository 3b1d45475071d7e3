"""Checkpoints: one safetensors file each, written atomically.

A checkpoint file holds the model weights under their own state_dict names (so plain
`safetensors.torch.load_file` + `load_state_dict` works too) and, in the safetensors metadata, the
resolved config, class names and progress. A resumable checkpoint (`last`) also carries the training
state (optimizer, scheduler, scaler, RNG) as tensors under `train_state/...` with a JSON skeleton in
the metadata. Nothing is ever unpickled, and a checkpoint is usable without the dataset on disk.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from fgir.config import Config, from_dict, to_dict
from fgir.engine.state_io import flatten, unflatten
from fgir.errors import FgirError
from fgir.fileio import atomic_path

FORMAT = "fgir-checkpoint/1"
TRAIN_STATE = "train_state"


class CheckpointError(FgirError, ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file."""


@dataclass
class Checkpoint:
    path: Path
    config: Config
    class_names: list[str]
    epoch: int
    global_step: int
    metrics: dict[str, Any] = field(default_factory=dict)
    model_state: dict[str, torch.Tensor] = field(default_factory=dict)
    train_state: dict[str, Any] | None = None


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    config: Config,
    class_names: list[str],
    *,
    epoch: int,
    global_step: int,
    metrics: dict[str, Any] | None = None,
    train_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (temporary file + rename): a crash never leaves half a file."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "config": yaml.safe_dump(to_dict(config), sort_keys=False),
        "class_names": json.dumps(class_names),
        "epoch": str(epoch),
        "global_step": str(global_step),
        "metrics": json.dumps(metrics or {}),
    }
    if train_state is not None:
        state_tensors: dict[str, torch.Tensor] = {}
        metadata[TRAIN_STATE] = json.dumps(flatten(train_state, TRAIN_STATE, state_tensors))
        tensors.update(state_tensors)
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(_unshare(tensors), str(tmp), metadata=metadata)
    return path


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied weights): store each one separately."""
    seen: set[int] = set()
    out = {}
    for key, value in tensors.items():
        ptr = value.untyped_storage().data_ptr() if value.numel() else -1
        out[key] = value.clone() if ptr in seen else value
        seen.add(ptr)
    return out


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """Accept a checkpoint file, or a run directory (-> its best checkpoint, else its last)."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "checkpoints" / "best.safetensors", path / "checkpoints" / "last.safetensors"):
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"{path}: a directory without checkpoints/best.safetensors or checkpoints/last.safetensors")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def load_checkpoint(path: str | os.PathLike, *, with_train_state: bool = False) -> Checkpoint:
    path = resolve_checkpoint_path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise CheckpointError(
                    f"{path}: not an fgir checkpoint (metadata format={metadata.get('format')!r}, expected {FORMAT!r}); "
                    "to start from foreign backbone weights use model.weights=<file>"
                )
            keys = list(handle.keys())
            model_state = {k: handle.get_tensor(k) for k in keys if not k.startswith(TRAIN_STATE + "/")}
            train_state = None
            if with_train_state:
                if TRAIN_STATE not in metadata:
                    raise CheckpointError(f"{path}: holds no training state (only 'last' checkpoints can be resumed)")
                tensors = {k: handle.get_tensor(k) for k in keys if k.startswith(TRAIN_STATE + "/")}
                train_state = unflatten(json.loads(metadata[TRAIN_STATE]), tensors)
    except SafetensorError as err:
        raise CheckpointError(f"{path}: unreadable checkpoint ({err})") from err
    return Checkpoint(
        path=path,
        config=from_dict(yaml.safe_load(metadata["config"]), origin=f"checkpoint {path}"),
        class_names=json.loads(metadata["class_names"]),
        epoch=int(metadata["epoch"]),
        global_step=int(metadata["global_step"]),
        metrics=json.loads(metadata.get("metrics", "{}")),
        model_state=model_state,
        train_state=train_state,
    )


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load with an error that lists what does not fit, instead of torch's wall of text."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own.keys() & state.keys() if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        parts = []
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
                parts.append(f"{title}: {shown}")
        raise CheckpointError(f"{source} does not fit the model ({'; '.join(parts)})")
    model.load_state_dict(state)


def restore_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, Checkpoint]:
    """Rebuild a trained model from its checkpoint alone (no dataset, no pretrained download)."""
    from fgir.models.factory import build_model  # the engine only needs the factory here

    checkpoint = load_checkpoint(path)
    config = checkpoint.config
    model = build_model(config.model, len(checkpoint.class_names), config.data.image_size, pretrained=False)
    load_model_state(model, checkpoint.model_state, str(checkpoint.path))
    return model.to(device).eval(), checkpoint


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a checkpoint file, without reading its tensors."""
    path = resolve_checkpoint_path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except SafetensorError as err:
        raise CheckpointError(f"{path}: unreadable checkpoint ({err})") from err


def update_metadata(path: str | os.PathLike, entries: dict[str, str]) -> Path:
    """Add or replace metadata entries (e.g. a fitted temperature) of an fgir checkpoint; the file is
    rewritten atomically with its tensors unchanged."""
    path = resolve_checkpoint_path(path)
    metadata = read_metadata(path)
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an fgir checkpoint (metadata format={metadata.get('format')!r})")
    protected = sorted(set(entries) & {"format", "config", "class_names", TRAIN_STATE})
    if protected:
        raise ValueError(f"metadata entries {', '.join(protected)} are written by save_checkpoint only")
    with safe_open(str(path), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={**metadata, **entries})
    return path
