"""Convert the GLSim paper's released checkpoints (Hugging Face `NYCU-PCSxNTHU-MIS/GLSim`, trained with
the arkel23/GLSim code) into fgir checkpoints.

A release file is a pickle of {config: argparse.Namespace, epoch, model, accuracy, optimizer}, where
`model` is the state_dict of the reference's own ViT (`ViTGLSim` wrapped as `.model`): separate
query/key/value linears, `pwff` MLPs, a one-block `aggregator` Transformer over the two CLS tokens
(image and crop). The converted model is fgir's GLSim with the reference box arithmetic and a shared
CLS token for the crop pass, which is what the reference forward does.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from fgir.config import IMAGENET_MEAN, IMAGENET_STD, Config, model_config, validate
from fgir.data.readers import DatasetFileError, read_class_names
from fgir.engine.checkpoint import load_model_state, save_checkpoint
from fgir.errors import FgirError
from fgir.methods import build_model
from fgir.models.glsim import GLSimConfig

BACKBONE = "vit_base_patch16_224"
VIT_B = {"embed_dim": 768, "depth": 12, "num_heads": 12, "patch_size": 16, "mlp_ratio": 4.0}

# Reference `--custom_mean_std` picks a per-dataset normalisation when it has one, else 0.5 (DAFB).
CUSTOM_MEAN_STD = {"cub": ((0.3659524, 0.42010019, 0.41562049), (0.07625843, 0.04599726, 0.06182727))}
HALF = (0.5, 0.5, 0.5)
SIMILARITY = {"cos": "cosine", "l1": "l1", "l2": "l2"}  # l1/l2 rank like the reference's mean distances
HEAD = {"cls": "token", "avg_cls": "avg", "max_cls": "max"}
# Settings of the paper recipe that fgir's GLSim hard-wires; other values give another architecture.
REQUIRED = {
    "reducer": "cls",  # the aggregator sees only the two CLS tokens
    "aggregator": True,
    "aggregator_num_hidden_layers": 1,
    "aggregator_norm": True,
    "encoder_norm": True,
    "pos_embedding_type": "learned",
    "dynamic_anchor": True,  # crop around the GLS-selected patches
    "anchor_random": False,
}
# Created by the reference's `anchor_class_token` option but never used in its forward pass.
UNUSED_KEYS = {"anchor_class_token"}

TOP_LEVEL = {
    "patch_embedding": "backbone.vit.patch_embed.proj",
    "class_token": "backbone.vit.cls_token",
    "positional_embedding.pos_embedding": "backbone.vit.pos_embed",
    "encoder_norm": "backbone.vit.norm",
    "aggregator_norm": "aggregator.norm",
    "head": "head",
}
BLOCK_PARTS = {"norm1": "norm1", "proj": "attn.proj", "pwff.fc1": "mlp.fc1", "pwff.fc2": "mlp.fc2", "norm2": "norm2"}
BLOCK_KEY = re.compile(r"(encoder\.blocks\.(\d+)|aggregator\.blocks\.0)\.(.+)\.(weight|bias)")
QKV = ("attn.proj_q", "attn.proj_k", "attn.proj_v")


class ConversionError(FgirError, ValueError):
    """A reference checkpoint that cannot be converted; the message names the file and the reason."""


def convert_glsim_reference(
    src: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    num_classes: int | None = None,
    class_names: str | os.PathLike | None = None,
) -> Path:
    """Convert the release file `src` to an fgir checkpoint at `out` (default: `src` with the suffix
    .safetensors). `num_classes`, if given, must match the checkpoint's head; `class_names` is a
    `class_id,class_name` CSV (default names "0".."C-1")."""
    src = Path(src)
    out = src.with_suffix(".safetensors") if out is None else Path(out)
    payload = read_reference(src)
    args, state = payload["config"], strip_prefixes(payload["model"])
    if not {"patch_embedding.weight", "head.weight"} <= state.keys():
        raise ConversionError(
            f"{src}: not a reference ViT GLSim state_dict (no patch_embedding/head weights; "
            f"model_name={getattr(args, 'model_name', '?')})"
        )
    _check_supported(src, args)
    classes = state["head.weight"].shape[0]
    if num_classes is not None and num_classes != classes:
        raise ConversionError(f"{src}: --num-classes {num_classes}, but the checkpoint's head has {classes} classes")
    names = _class_names(class_names, classes)
    if len(names) != classes:
        raise ConversionError(f"{class_names}: {len(names)} class names for a {classes}-class head")

    config = build_config(args, state)
    model = build_model(config.model, classes, config.data.image_size, pretrained=False)
    load_model_state(model, map_state_dict(state), f"{src} (converted)")
    metrics = {"reference_accuracy": float(payload["accuracy"])} if "accuracy" in payload else {}
    return save_checkpoint(
        out, model, config, names, epoch=int(payload.get("epoch", 0)), global_step=0, metrics=metrics
    )


def read_reference(src: Path) -> dict[str, Any]:
    """Unpickle with torch's weights-only loader, allowing argparse.Namespace and nothing else, so a
    tampered file cannot run code."""
    if src.is_dir():
        raise ConversionError(f"{src} is a folder; give the release's .pth file")
    if not src.is_file():
        raise ConversionError(f"reference checkpoint not found: {src}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            payload = torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        foreign = _foreign_globals(src)
        if foreign or "Unsupported global" in str(err):
            raise ConversionError(
                f"{src}: refused to load: it holds objects other than tensors and an argparse.Namespace"
                f"{' (' + ', '.join(foreign) + ')' if foreign else ''}, which could run code"
            ) from None
        raise ConversionError(f"{src}: not a file written by torch.save (it does not unpickle)") from None
    except (RuntimeError, EOFError, SafetensorError) as err:  # torch.load's errors for damaged or foreign files
        reason = str(err).splitlines()[0] if str(err) else "the file ends early"
        raise ConversionError(f"{src}: not a readable torch.save file ({type(err).__name__}: {reason})") from None
    if not isinstance(payload, dict) or not {"config", "model"} <= payload.keys():
        raise ConversionError(f"{src}: expected a dict with 'config' and 'model' (a GLSim release checkpoint)")
    if not isinstance(payload["config"], argparse.Namespace):
        raise ConversionError(f"{src}: 'config' is a {type(payload['config']).__name__}, not an argparse.Namespace")
    return payload


def _foreign_globals(src: Path) -> list[str]:
    """What the file would import besides argparse.Namespace; empty when that cannot be listed (a file
    that is not a torch.save zip archive)."""
    try:
        return sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(str(src))) - {"argparse.Namespace"})
    except (ValueError, RuntimeError):
        return []


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the DDP (`module.`) and wrapper (`model.`) prefixes the reference trainer saved with."""
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "model."):
            key = key.removeprefix(prefix)
        out[key] = value
    return out


def map_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reference names -> fgir GLSim names. q, k, v fuse into timm's qkv (stacked in that order along
    the output dimension); unknown keys keep their name so the strict load reports them."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in UNUSED_KEYS:
            continue
        name, _, kind = key.rpartition(".")
        if key in TOP_LEVEL:  # parameters without .weight/.bias (tokens, position embedding)
            out[TOP_LEVEL[key]] = value
        elif name in TOP_LEVEL:
            out[f"{TOP_LEVEL[name]}.{kind}"] = value
        elif match := BLOCK_KEY.fullmatch(key):
            block, index, part, kind = match.groups()
            target = f"backbone.vit.blocks.{index}" if index is not None else "aggregator.block"
            if part in QKV:
                if part == QKV[0]:
                    fused = [state[f"{block}.{p}.{kind}"] for p in QKV]
                    out[f"{target}.attn.qkv.{kind}"] = torch.cat(fused, dim=0)
            elif part in BLOCK_PARTS:
                out[f"{target}.{BLOCK_PARTS[part]}.{kind}"] = value
            else:
                out[key] = value
        else:
            out[key] = value
    return out


def build_config(args: argparse.Namespace, state: dict[str, torch.Tensor]) -> Config:
    """The fgir config of the reference run. The architecture comes from the tensor shapes (so any
    ViT width/depth/patch converts); heads from the Namespace (default: 64 channels each)."""
    dim, _, patch_h, patch_w = state["patch_embedding.weight"].shape
    if patch_h != patch_w:
        raise ConversionError(f"non-square patches {patch_h}x{patch_w} are not supported")
    image_size = int(getattr(args, "image_size", 224))
    tokens = state["positional_embedding.pos_embedding"].shape[1]
    if tokens != (image_size // patch_h) ** 2 + 1:
        raise ConversionError(
            f"config image_size={image_size} with {patch_h}px patches needs {(image_size // patch_h) ** 2 + 1} "
            f"position embeddings, the checkpoint has {tokens}"
        )
    arch = {
        "embed_dim": dim,
        "depth": len({k.split(".")[2] for k in state if k.startswith("encoder.blocks.")}),
        "num_heads": int(getattr(args, "num_attention_heads", None) or max(1, dim // 64)),
        "patch_size": patch_h,
        "mlp_ratio": state["encoder.blocks.0.pwff.fc1.weight"].shape[0] / dim,
    }
    mean, std = _normalisation(args)
    config = Config()
    config.data.name = str(getattr(args, "dataset_name", config.data.name))
    config.data.num_classes = state["head.weight"].shape[0]
    config.data.image_size = image_size
    config.data.mean, config.data.std = list(mean), list(std)
    config.data.resize_ratio = _resize_ratio(args, image_size, config.data.resize_ratio)
    config.model = model_config(
        "glsim",
        backbone=BACKBONE,
        pretrained=False,
        backbone_args={k: v for k, v in arch.items() if v != VIT_B[k]},
        glsim=GLSimConfig(
            top_o=int(getattr(args, "dynamic_top", 8)),  # the reference's argparse default
            similarity=SIMILARITY[getattr(args, "sim_metric", None) or "cos"],
            box="reference",
            crop_cls="shared",
            selection="crop",
            head=HEAD[getattr(args, "classifier", "cls")],
            test_flip=bool(getattr(args, "test_flip", False)),
        ),
    )
    validate(config)
    return config


def _check_supported(src: Path, args: argparse.Namespace) -> None:
    """Settings absent from the Namespace are taken as the paper's (the trainer writes them back)."""
    problems = [
        f"{key}={getattr(args, key)!r} (need {wanted!r})"
        for key, wanted in REQUIRED.items()
        if getattr(args, key, None) not in (None, wanted)
    ]
    if getattr(args, "sim_metric", None) not in (None, *SIMILARITY):
        problems.append(f"sim_metric={args.sim_metric!r} (known: {', '.join(SIMILARITY)})")
    if getattr(args, "classifier", "cls") not in HEAD:
        problems.append(f"classifier={args.classifier!r} (known: {', '.join(HEAD)})")
    widths = {getattr(args, "representation_size", None), getattr(args, "hidden_size", None)} - {None}
    if len(widths) > 1:
        problems.append("representation_size differs from hidden_size (a reducer projection)")
    if problems:
        raise ConversionError(f"{src}: not the GLSim architecture fgir implements: {'; '.join(problems)}")


def _class_names(path: str | os.PathLike | None, classes: int) -> list[str]:
    if path is None:
        return [str(i) for i in range(classes)]
    try:
        return read_class_names(path)
    except (DatasetFileError, OSError) as err:  # reported like every other conversion error
        raise ConversionError(f"class names: {err}") from err


def _normalisation(args: argparse.Namespace) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if not getattr(args, "custom_mean_std", False):
        return IMAGENET_MEAN, IMAGENET_STD
    return CUSTOM_MEAN_STD.get(getattr(args, "dataset_name", ""), (HALF, HALF))


def _resize_ratio(args: argparse.Namespace, image_size: int, default: float) -> float:
    """Reference test transform: square resize to test_resize_size, then centre crop (or a direct
    resize to image_size with test_resize_directly)."""
    if getattr(args, "test_resize_directly", False):
        return 1.0
    test_resize = getattr(args, "test_resize_size", None)
    return test_resize / image_size if test_resize else default
