"""Checkpoints: one safetensors file each, written atomically.

A checkpoint file holds the model weights under their own state_dict names (so plain
`safetensors.torch.load_file` + `load_state_dict` works too) and, in the safetensors metadata, the
resolved config, class names and progress. A resumable checkpoint (`last`) also carries the training
state (optimizer, scheduler, scaler, RNG) as tensors under `train_state/...` with a JSON skeleton in
the metadata. Nothing is ever unpickled, and a checkpoint is usable without the dataset on disk.

Frozen-backbone methods (ILA, adapters, VPT, LoRA, ...) built on pretrained weights store only what
is not the pretrained backbone: their trainable weights and every other tensor that is not a frozen
backbone tensor (e.g. BatchNorm statistics of added modules), plus the backbone's identity in the
metadata (model name, weight source and a SHA-256 of the frozen backbone tensors). Five tasks on one
backbone then cost five small files; loading rebuilds the backbone from the config's weights and
refuses it when its hash differs.

A run with a weight EMA (`train.ema_decay`) also stores the EMA of the saved tensors under
`ema/<name>`, and in the metadata `weights` which of the two sets the checkpoint serves
(`Checkpoint.served_state`: what the test split, predict, eval and export use).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from fgir.config import Config, absolute_path, from_dict, to_dict
from fgir.engine.state_io import flatten, unflatten
from fgir.errors import FgirError
from fgir.fileio import atomic_path
from fgir.hub import is_hub_reference, pull
from fgir.methods.capabilities import frozen_state_keys
from fgir.models.backbone import Backbone
from fgir.models.state_fit import StateMismatch, vit_layout
from fgir.models.weights import WeightsNotFoundError

FORMAT = "fgir-checkpoint/1"
TRAIN_STATE = "train_state"
EMA = "ema"  # prefix of the EMA tensors
SERVED = "weights"  # metadata entry: "raw" or "ema", in checkpoints holding an EMA
BACKBONE = "backbone"  # metadata entry of adapter-only checkpoints
SUPPLY_BACKBONE = ("give the backbone weights it was trained on with --weights PATH (fgir predict, eval, "
                   "calibrate, explain, serve, bench, analyze cka, convert merge-lora; weights=PATH in Python), "
                   "or model.weights=PATH when training from it")


class CheckpointError(FgirError, ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file."""


@dataclass(frozen=True)
class BackboneIdentity:
    """The pretrained backbone an adapter-only checkpoint was trained on."""

    model: str  # timm name (model.backbone)
    weights: str | None  # model.weights, absolute (older checkpoints: as given); None: the Hugging Face hub
    sha256: str  # of the frozen backbone tensors, see `backbone_hash`
    tensors: int  # how many frozen tensors the hash covers

    def describe(self) -> str:
        return f"{self.model} (weights {self.weights or 'from the Hugging Face hub'})"


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
    # Set for adapter-only checkpoints: model_state then lacks the frozen backbone tensors.
    backbone: BackboneIdentity | None = None
    ema_state: dict[str, torch.Tensor] = field(default_factory=dict)  # the EMA of the stored tensors, if any
    served: str = "raw"  # which weights the checkpoint serves: raw (model_state) or ema

    @property
    def served_state(self) -> dict[str, torch.Tensor]:
        """The weights to score and deploy: the raw ones, or with `served=ema` the EMA over them."""
        return {**self.model_state, **self.ema_state} if self.served == "ema" else self.model_state


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
    ema_state: dict[str, torch.Tensor] | None = None,
    served: str = "raw",
) -> Path:
    """Write a checkpoint atomically (temporary file + rename): a crash never leaves half a file.
    A frozen-backbone model on pretrained weights is saved adapter-only (see the module docstring).
    `ema_state`: the weight EMA to store beside the weights; `served` (raw / ema): which set is used."""
    state = model.state_dict()
    metadata = {
        "format": FORMAT,
        "config": yaml.safe_dump(to_dict(config), sort_keys=False),
        "class_names": json.dumps(class_names),
        "epoch": str(epoch),
        "global_step": str(global_step),
        "metrics": json.dumps(metrics or {}),
    }
    frozen = frozen_backbone_keys(model)
    # From random weights the backbone could not be rebuilt from the config: saved whole.
    if frozen and config.model.pretrained:
        identity = backbone_identity(model, config)
        metadata[BACKBONE] = json.dumps(asdict(identity))
        state = {key: value for key, value in state.items() if key not in frozen}
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if ema_state:
        metadata[SERVED] = served
        tensors.update({f"{EMA}/{k}": v.detach().cpu().contiguous() for k, v in ema_state.items()})
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
    """Accept a checkpoint file, a run directory (-> its best checkpoint, else its last; the averaged
    one of a run trained with train.select=average), or a run pushed to the Hugging Face Hub,
    `hf-hub:ORG/NAME[@revision]` (-> its pulled checkpoint)."""
    if is_hub_reference(path):
        return pull(path).checkpoint
    path = Path(path)
    if path.is_dir():
        names = ("averaged", "best", "last") if _selects_average(path) else ("best", "last")
        for candidate in (path / "checkpoints" / f"{name}.safetensors" for name in names):
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"{path}: a directory without checkpoints/best.safetensors or checkpoints/last.safetensors")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def _selects_average(run_dir: Path) -> bool:
    """Was the run in `run_dir` tested with the mean of its best epochs (train.select=average)?"""
    config = run_dir / "config.yaml"
    try:
        train = (yaml.safe_load(config.read_text()) or {}).get("train") if config.is_file() else None
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(train, dict) and train.get("select") == "average"


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
            model_state = {k: handle.get_tensor(k) for k in keys if not k.startswith((TRAIN_STATE + "/", EMA + "/"))}
            ema_state = {k.removeprefix(EMA + "/"): handle.get_tensor(k) for k in keys if k.startswith(EMA + "/")}
            train_state = None
            if with_train_state:
                if TRAIN_STATE not in metadata:
                    raise CheckpointError(f"{path}: holds no training state (only 'last' checkpoints can be resumed)")
                tensors = {k: handle.get_tensor(k) for k in keys if k.startswith(TRAIN_STATE + "/")}
                train_state = unflatten(_entry(path, metadata, TRAIN_STATE, json.loads, dict), tensors)
    except SafetensorError as err:
        raise unreadable_checkpoint(path, err) from err
    class_names = _entry(path, metadata, "class_names", json.loads, list)
    if not all(isinstance(name, str) for name in class_names):
        raise CheckpointError(f"{path}: damaged fgir checkpoint: metadata 'class_names' is not a list of names")
    return Checkpoint(
        path=path,
        config=from_dict(_entry(path, metadata, "config", yaml.safe_load, dict), origin=f"checkpoint {path}"),
        class_names=class_names,
        epoch=_entry(path, metadata, "epoch", int, int),
        global_step=_entry(path, metadata, "global_step", int, int),
        metrics=_entry(path, metadata, "metrics", json.loads, dict) if "metrics" in metadata else {},
        model_state=model_state,
        train_state=train_state,
        backbone=_backbone_identity(path, metadata),
        ema_state=ema_state,
        served=_served(path, metadata, ema_state),
    )


def _served(path: Path, metadata: dict[str, str], ema_state: dict[str, torch.Tensor]) -> str:
    served = metadata.get(SERVED, "raw")
    if served not in ("raw", "ema") or (served == "ema" and not ema_state):
        raise CheckpointError(f"{path}: damaged fgir checkpoint: metadata '{SERVED}' is {served!r}, expected 'raw' "
                              "or 'ema' (with EMA tensors)")
    return served


def _entry(path: Path, metadata: dict[str, str], name: str, parse: Callable[[str], Any], kind: type) -> Any:
    """A metadata entry, parsed (JSON, YAML or an integer) and of the expected kind; the error of a
    damaged file names the file and the entry."""
    if name not in metadata:
        raise CheckpointError(f"{path}: damaged fgir checkpoint: its metadata has no '{name}' entry")
    try:
        value = parse(metadata[name])
    except (ValueError, yaml.YAMLError) as err:  # json.JSONDecodeError is a ValueError
        reason = getattr(err, "problem", None) or str(err).splitlines()[0]  # a YAML error's problem is one line
        raise CheckpointError(f"{path}: damaged fgir checkpoint: metadata '{name}' does not parse ({reason})") from None
    if not isinstance(value, kind):
        raise CheckpointError(f"{path}: damaged fgir checkpoint: metadata '{name}' is a {type(value).__name__}, "
                              f"not a {kind.__name__}")
    return value


def read_backbone_identity(path: str | os.PathLike) -> BackboneIdentity | None:
    """The backbone identity of an adapter-only checkpoint (None for a full one), from its metadata
    alone: whether rebuilding its model needs the pretrained weights."""
    return _backbone_identity(resolve_checkpoint_path(path), read_metadata(path))


def _backbone_identity(path: Path, metadata: dict[str, str]) -> BackboneIdentity | None:
    if BACKBONE not in metadata:
        return None
    fields = _entry(path, metadata, BACKBONE, json.loads, dict)
    try:
        return BackboneIdentity(**fields)
    except TypeError:  # other or missing fields
        raise CheckpointError(f"{path}: damaged fgir checkpoint: metadata '{BACKBONE}' holds {sorted(fields)}, "
                              f"expected {[f.name for f in dataclasses.fields(BackboneIdentity)]}") from None


def load_model_state(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, backbone: BackboneIdentity | None = None
) -> None:
    """Strict load with an error that lists what does not fit, instead of torch's wall of text.
    `backbone`: the identity of an adapter-only checkpoint (`Checkpoint.backbone`); the model's frozen
    backbone must have that hash, and `state` then holds everything else."""
    own = model.state_dict()
    if backbone is not None:
        frozen = frozen_backbone_keys(model)
        if not frozen:
            raise CheckpointError(
                f"{source} holds only the trainable weights of a frozen-backbone method, but the model "
                f"({type(model).__name__}) has no frozen backbone"
            )
        digest = backbone_hash(model)
        if digest != backbone.sha256:
            raise CheckpointError(
                f"{source} was trained on the backbone {backbone.describe()} with SHA-256 "
                f"{backbone.sha256[:16]}..., but the backbone built here has {digest[:16]}...: different "
                f"weights (the checkpoint stores only the trainable ones); {SUPPLY_BACKBONE}"
            )
        own = {key: value for key, value in own.items() if key not in frozen}
    mismatch = StateMismatch.between(own, state)
    if mismatch:
        lines = [f"{source} does not fit the model: {mismatch.counts()}", *mismatch.lines("checkpoint")]
        theirs, ours = vit_layout(state), vit_layout(own)
        if theirs is not None and ours is not None and theirs != ours:
            lines.append(f"the checkpoint holds {theirs.describe()}; the model is {ours.describe()}")
        if backbone is None and mismatch.missing and set(mismatch.missing) <= frozen_backbone_keys(model):
            lines.append("it lacks just the frozen backbone: an adapter-only checkpoint, whose state loads "
                         "with backbone=checkpoint.backbone (restore_model does this)")
        raise CheckpointError("\n  ".join(lines))
    model.load_state_dict(state, strict=backbone is None)


def restore_model(path: str | os.PathLike, device: str | torch.device = "cpu",
                  weights: str | os.PathLike | None = None) -> tuple[nn.Module, Checkpoint]:
    """Rebuild a trained model from its checkpoint alone (no dataset, no pretrained download).

    An adapter-only checkpoint also needs its pretrained backbone: from `weights` (a file or folder,
    as for model.weights) when given, else from the source it stores; either way its SHA-256 must be
    the stored one. A full checkpoint holds its backbone and does not read `weights`. A Hub run
    (`hf-hub:...`) that ships its backbone file uses it when `weights` is None."""
    from fgir.methods import build_model  # the methods import torch models: only when one is rebuilt

    if is_hub_reference(path):
        pulled = pull(path)
        path, weights = pulled.checkpoint, weights if weights is not None else pulled.backbone
    checkpoint = load_checkpoint(path)
    config, identity = checkpoint.config, checkpoint.backbone
    model_config = config.model
    if identity is not None:
        source = absolute_path(weights) if weights is not None else identity.weights
        model_config = replace(model_config, weights=source)
        if source is not None and not os.path.exists(source):
            raise CheckpointError(
                f"{checkpoint.path} holds only the trainable weights; its frozen backbone {identity.model} "
                f"(SHA-256 {identity.sha256[:16]}...) is read from {source}, which does not exist: "
                f"{SUPPLY_BACKBONE}"
            )
    try:
        model = build_model(model_config, len(checkpoint.class_names), config.data.image_size,
                            pretrained=identity is not None)
    except WeightsNotFoundError as err:  # the hub, unreachable and not cached
        raise CheckpointError(f"{checkpoint.path}: its frozen backbone cannot be loaded: "
                              f"{str(err).splitlines()[0]} ... {SUPPLY_BACKBONE}") from None
    load_model_state(model, checkpoint.served_state, str(checkpoint.path), identity)
    return model.to(device).eval(), checkpoint


def frozen_backbone_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the frozen pretrained tensors of a frozen-backbone model (what it answers
    as `HasFrozenBackbone`); empty for other models."""
    return frozen_state_keys(model) & model.state_dict().keys()


def backbone_hash(model: nn.Module) -> str:
    """SHA-256 of the frozen backbone tensors: names (relative to the backbone, as the plain backbone
    names them (`canonical_key`), so every method on one backbone gets the same hash), dtypes, shapes
    and bytes, in sorted name order."""
    backbone_prefix = _backbone_prefix(model)
    state = model.state_dict()
    digest = hashlib.sha256()
    named = {model.canonical_key(key).removeprefix(backbone_prefix): key for key in frozen_backbone_keys(model)}
    for name in sorted(named):
        tensor = state[named[name]].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def backbone_identity(model: nn.Module, config: Config) -> BackboneIdentity:
    weights = config.model.weights
    return BackboneIdentity(model=config.model.backbone, weights=absolute_path(weights) if weights else None,
                            sha256=backbone_hash(model), tensors=len(frozen_backbone_keys(model)))


def _backbone_prefix(model: nn.Module) -> str:
    for name, module in model.named_modules():
        if isinstance(module, Backbone):
            return f"{name}." if name else ""
    return ""


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a checkpoint file, without reading its tensors."""
    path = resolve_checkpoint_path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except SafetensorError as err:
        raise unreadable_checkpoint(path, err) from err


# How torch.save files start: a zip archive (PyTorch >= 1.6) or a raw pickle (protocol 2 to 5).
TORCH_SAVE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def unreadable_checkpoint(path: Path, err: SafetensorError) -> CheckpointError:
    """The error for a file safetensors cannot read; a torch.save file is told apart, since loading
    one would unpickle it (which can run any code)."""
    with open(path, "rb") as handle:
        start = handle.read(4)
    if start.startswith(TORCH_SAVE_MAGIC):
        return CheckpointError(f"{path}: a torch.save (pickle) file, not an fgir checkpoint; it is refused, since "
                               "unpickling can run any code (a GLSim paper release: fgir convert glsim-reference)")
    return CheckpointError(f"{path}: unreadable checkpoint ({err})")


def update_metadata(path: str | os.PathLike, entries: dict[str, str]) -> Path:
    """Add or replace metadata entries (e.g. a fitted temperature) of an fgir checkpoint; the file is
    rewritten atomically with its tensors unchanged."""
    path = resolve_checkpoint_path(path)
    metadata = read_metadata(path)
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an fgir checkpoint (metadata format={metadata.get('format')!r})")
    protected = sorted(set(entries) & {"format", "config", "class_names", TRAIN_STATE, BACKBONE, SERVED})
    if protected:
        raise ValueError(f"metadata entries {', '.join(protected)} are written by save_checkpoint only")
    with safe_open(str(path), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={**metadata, **entries})
    return path
