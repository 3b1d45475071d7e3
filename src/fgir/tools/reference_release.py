"""What the release files of the GLSim (arXiv 2407.12891) and ILA (arXiv 2409.11051) papers share,
for their converters (`convert_glsim`, `convert_ila`).

Both reference codebases save `{config: argparse.Namespace, epoch, model, accuracy, optimizer}`,
where `model` is the state_dict of their own ViT (separate query/key/value linears, `pwff` MLPs),
saved through a `.model` wrapper. Both evaluate with the same torchvision PIL pipeline: a bicubic
square resize to `test_resize_size` (default int(1.34 * image_size)), a centre crop, ToTensor, and
the ImageNet normalisation or, with `--custom_mean_std`, a per-dataset one (0.5 where the dataset
has none); the converted config asks fgir for exactly those pixels.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from fgir.config import IMAGENET_MEAN, IMAGENET_STD, Config, DataConfig
from fgir.data.readers import DatasetFileError, read_class_names
from fgir.engine.checkpoint import load_model_state, save_checkpoint
from fgir.errors import FgirError
from fgir.methods import build_model

BACKBONE = "vit_base_patch16_224"
VIT_B = {"embed_dim": 768, "depth": 12, "num_heads": 12, "patch_size": 16, "mlp_ratio": 4.0}

# The normalisations `--custom_mean_std` picks by dataset name; any other dataset gets 0.5.
CUSTOM_MEAN_STD = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "tinyin": ((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5070, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "cub": ((0.3659524, 0.42010019, 0.41562049), (0.07625843, 0.04599726, 0.06182727)),
}
HALF = (0.5, 0.5, 0.5)
RESIZE_RATIO = 1.34  # the reference's resize_size default: int(1.34 * image_size)

TOP_LEVEL = {
    "patch_embedding": "backbone.vit.patch_embed.proj",
    "class_token": "backbone.vit.cls_token",
    "positional_embedding.pos_embedding": "backbone.vit.pos_embed",
    "encoder_norm": "backbone.vit.norm",
}
BLOCK_PARTS = {"norm1": "norm1", "proj": "attn.proj", "pwff.fc1": "mlp.fc1", "pwff.fc2": "mlp.fc2", "norm2": "norm2"}
BLOCK_KEY = re.compile(r"(?P<block>[\w.]+\.blocks\.\d+)\.(?P<part>.+)\.(?P<kind>weight|bias)")
ENCODER_BLOCK = re.compile(r"encoder\.blocks\.(\d+)")
QKV = ("attn.proj_q", "attn.proj_k", "attn.proj_v")


class ConversionError(FgirError, ValueError):
    """A reference checkpoint that cannot be converted; the message names the file and the reason."""


def read_release(src: Path, release: str) -> dict[str, Any]:
    """Unpickle with torch's weights-only loader, allowing argparse.Namespace and nothing else, so a
    tampered file cannot run code. `release` names the expected kind in errors ("a GLSim release")."""
    if src.is_dir():
        raise ConversionError(f"{src} is a folder; give the release's .pth file")
    if not src.is_file():
        raise ConversionError(f"reference checkpoint not found: {src}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # garbage reads as odd pickle protocols; the error says enough
            payload = torch.load(src, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, SafetensorError) as err:  # torch.load's errors for damaged or foreign files
        reason = str(err).splitlines()[0] if str(err) else "the file ends early"
        raise ConversionError(f"{src}: not a readable torch.save file ({type(err).__name__}: {reason})") from None
    except Exception as err:  # noqa: BLE001 - on garbage the unpickler fails as it may (IndexError, KeyError, ...)
        foreign = _foreign_globals(src) if isinstance(err, pickle.UnpicklingError) else []
        if foreign or "Unsupported global" in str(err):
            raise ConversionError(
                f"{src}: refused to load: it holds objects other than tensors and an argparse.Namespace"
                f"{' (' + ', '.join(foreign) + ')' if foreign else ''}, which could run code"
            ) from None
        raise ConversionError(f"{src}: not a file written by torch.save (it does not unpickle)") from None
    if not isinstance(payload, dict) or not {"config", "model"} <= payload.keys():
        raise ConversionError(f"{src}: expected a dict with 'config' and 'model' ({release} checkpoint)")
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
    """Drop the DDP (`module.`) and wrapper (`model.`) prefixes the reference trainers saved with."""
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "model."):
            key = key.removeprefix(prefix)
        out[key] = value
    return out


def encoder_block(block: str) -> str | None:
    """`encoder.blocks.3` -> `backbone.vit.blocks.3`; None for blocks outside the encoder."""
    match = ENCODER_BLOCK.fullmatch(block)
    return f"backbone.vit.blocks.{match.group(1)}" if match else None


def map_reference_vit(
    state: dict[str, torch.Tensor],
    top_level: Mapping[str, str],
    block_target: Callable[[str], str | None] = encoder_block,
    block_parts: Mapping[str, str] = BLOCK_PARTS,
) -> dict[str, torch.Tensor]:
    """Reference ViT names -> fgir names. `top_level`: module (or parameter) renames outside the
    blocks; `block_target`: the fgir prefix of a reference block (`...blocks.N`); q, k, v fuse into
    timm's qkv (stacked in that order along the output dimension). Unknown keys keep their name, so
    the strict load reports them."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name, _, kind = key.rpartition(".")
        match = BLOCK_KEY.fullmatch(key)
        target = block_target(match["block"]) if match else None
        if key in top_level:  # parameters without .weight/.bias (tokens, position embedding)
            out[top_level[key]] = value
        elif name in top_level:
            out[f"{top_level[name]}.{kind}"] = value
        elif match and target is not None and match["part"] in QKV:
            if match["part"] == QKV[0]:
                fused = [state[f"{match['block']}.{part}.{kind}"] for part in QKV]
                out[f"{target}.attn.qkv.{kind}"] = torch.cat(fused, dim=0)
        elif match and target is not None and match["part"] in block_parts:
            out[f"{target}.{block_parts[match['part']]}.{kind}"] = value
        else:
            out[key] = value
    return out


def vit_architecture(state: dict[str, torch.Tensor], args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    """(image size, the timm ViT's backbone_args that differ from ViT-B/16). Widths, depth and patch
    size come from the tensor shapes (so any ViT converts); heads from the Namespace (default: 64
    channels each)."""
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
        "depth": len({key.split(".")[2] for key in state if key.startswith("encoder.blocks.")}),
        "num_heads": int(getattr(args, "num_attention_heads", None) or max(1, dim // 64)),
        "patch_size": patch_h,
        "mlp_ratio": state["encoder.blocks.0.pwff.fc1.weight"].shape[0] / dim,
    }
    return image_size, {key: value for key, value in arch.items() if value != VIT_B[key]}


def reference_data(args: argparse.Namespace, image_size: int, num_classes: int) -> DataConfig:
    """The data section that gives the reference's test pixels: bicubic square resize to
    `test_resize_size` then centre crop (or straight to the image size with `test_resize_directly`),
    in Pillow, ToTensor's x / 255, the reference's mean/std; JPEGs decoded at full size, as PIL's
    plain `Image.open` does."""
    data = DataConfig()
    data.name = str(getattr(args, "dataset_name", None) or data.name)
    data.num_classes = num_classes
    data.image_size = image_size
    mean, std = _normalisation(args)
    data.mean, data.std = list(mean), list(std)
    data.interpolation = "bicubic"
    data.transform_backend = "pil"
    data.fast_decode = False
    resize = getattr(args, "resize_size", None) or int(image_size * RESIZE_RATIO)
    if getattr(args, "test_resize_directly", False):
        data.test_resize = "direct"
        data.resize_ratio = resize / image_size  # training's resize; the test resize is the image size
    else:
        data.test_resize = "crop"
        data.resize_ratio = (getattr(args, "test_resize_size", None) or resize) / image_size
    return data


def _normalisation(args: argparse.Namespace) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if not getattr(args, "custom_mean_std", False):
        return IMAGENET_MEAN, IMAGENET_STD
    return CUSTOM_MEAN_STD.get(getattr(args, "dataset_name", None) or "", (HALF, HALF))


def unsupported_settings(args: argparse.Namespace, required: Mapping[str, Any]) -> list[str]:
    """`key=value (need wanted)` for each Namespace setting outside the architecture fgir implements;
    a setting absent from the Namespace is taken as the paper's. A tuple of wanted values allows any."""
    problems = []
    for key, wanted in required.items():
        allowed = wanted if isinstance(wanted, tuple) else (wanted,)
        if getattr(args, key, None) not in (None, *allowed):
            need = " or ".join(repr(value) for value in allowed)
            problems.append(f"{key}={getattr(args, key)!r} (need {need})")
    return problems


Prepare = Callable[[Path, argparse.Namespace, dict[str, torch.Tensor]], tuple[Config, dict[str, torch.Tensor]]]


@dataclass(frozen=True)
class Release:
    """One paper's release format: `name` for errors ("an ILA release"); `prepare(src, namespace,
    state)` checks the file and returns the fgir config and the renamed state."""

    name: str
    prepare: Prepare

    def convert(
        self,
        src: str | os.PathLike,
        out: str | os.PathLike | None = None,
        *,
        num_classes: int | None = None,
        class_names: str | os.PathLike | None = None,
    ) -> Path:
        """Convert the release file `src` to an fgir checkpoint at `out` (default: `src` with the
        suffix .safetensors): the model is built from the prepared config, loaded strictly and saved
        with the release's epoch and accuracy. `num_classes`, if given, must match the head;
        `class_names` is a `class_id,class_name` CSV (default names "0".."C-1")."""
        src = Path(src)
        out = src.with_suffix(".safetensors") if out is None else Path(out)
        payload = read_release(src, self.name)
        args, state = payload["config"], strip_prefixes(payload["model"])
        if "patch_embedding.weight" not in state:
            raise ConversionError(
                f"{src}: not a state_dict of the reference's ViT (no patch_embedding.weight; "
                f"model_name={getattr(args, 'model_name', '?')})"
            )
        config, converted = self.prepare(src, args, state)
        classes = config.data.num_classes
        if num_classes is not None and num_classes != classes:
            raise ConversionError(
                f"{src}: --num-classes {num_classes}, but the checkpoint's head has {classes} classes"
            )
        names = _class_names(class_names, classes)
        if len(names) != classes:
            raise ConversionError(f"{class_names}: {len(names)} class names for a {classes}-class head")
        model: nn.Module = build_model(config.model, classes, config.data.image_size, pretrained=False)
        load_model_state(model, converted, f"{src} (converted)")
        metrics = {"reference_accuracy": float(payload["accuracy"])} if "accuracy" in payload else {}
        return save_checkpoint(
            out, model, config, names, epoch=int(payload.get("epoch", 0)), global_step=0, metrics=metrics
        )


def _class_names(path: str | os.PathLike | None, classes: int) -> list[str]:
    if path is None:
        return [str(i) for i in range(classes)]
    try:
        return read_class_names(path)
    except (DatasetFileError, OSError) as err:  # reported like every other conversion error
        raise ConversionError(f"class names: {err}") from err
