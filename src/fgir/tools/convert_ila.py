"""Convert the ILA paper's released checkpoints (Rios et al., arXiv 2409.11051; Hugging Face
`NYCU-PCSxNTHU-MIS/DownSamplingInterLayerAdapter`, trained with the arkel23/DownSamplingInterLayerAdapter
code) into fgir checkpoints of `ila`, `ila_plus` or `ila_pp`.

The release's `model` is the state_dict of the reference's own ViT (wrapped as `.model`) with the
inter-layer adapters in its encoder: DS-ILAs `encoder.ila_ds.J` after the blocks `ila_ds_locs`,
same-resolution ILAs `encoder.ila.J` after the blocks `ila_locs` (ILA+; the J-th module runs after
the J-th of those blocks in depth order), and with `--adapter adapter` bottleneck adapters beside
attention and MLP in every block (ILA++). An adapter's CLS path is a 1x1 convolution on a 1x1 map,
i.e. the d->d linear map of fgir's `prefix_proj`; its BatchNorms come with their running statistics.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import torch

from fgir.config import Config, model_config, validate
from fgir.tools.reference_release import (
    BACKBONE,
    BLOCK_PARTS,
    TOP_LEVEL,
    ConversionError,
    Release,
    encoder_block,
    map_reference_vit,
    reference_data,
    unsupported_settings,
    vit_architecture,
)

# The reference's argparse defaults where the Namespace lacks a key.
DEFAULT_DS_LOCS = [3, 7]
ALL_OTHER_BLOCKS = [-1]  # ila_locs: a same-resolution ILA after every block without a DS-ILA
# Settings fgir's ILA hard-wires (Sec. 3 of the paper, the reference's defaults); other values give
# another module. A tuple allows any of its values.
REQUIRED = {
    "ila": True,
    "classifier": "cls",
    "ila_cls_conv": True,  # a separate 1x1 conv for the CLS token
    "ila_ds_conv": True,  # the residual branch of a DS-ILA down-samples too
    "ila_ds_conv_type": ("dws_near_ones_init", "dws_ones_init"),  # depthwise; the two differ in init only
    "ila_ds_kernel_size": 3,
    "adapter_kernel_size": 3,
    "ila_norm1": "bn",
    "ila_norm2": "bn",
    "ila_norm3": "bn",
    "ila_padding": False,  # valid convolutions in a DS-ILA: the grid shrinks
    "ila_dilation": 1,
    "ila_dws_conv_groups": 1,
    "adapter": ("adapter",),  # None (absent) or the bottleneck adapter of ILA++
    "encoder_norm": True,
    "pos_embedding_type": "learned",
    "prompt": None,
    "selector": None,
    "dynamic_anchor": False,
}
ILA_TOP_LEVEL = {**TOP_LEVEL, "head.head": "head"}
ADAPTER_PARTS = {
    "adapter_attn.adapter_down": "attn_adapter.down",
    "adapter_attn.adapter_up": "attn_adapter.up",
    "adapter_pwffn.adapter_down": "mlp_adapter.down",
    "adapter_pwffn.adapter_up": "mlp_adapter.up",
}
ILA_PARTS = {
    "adapter_down": "down",
    "norm1.1": "norm_down",
    "adapter_conv.0": "conv_depthwise",
    "adapter_conv.1.0": "norm_conv",
    "adapter_conv.2": "conv_pointwise",
    "adapter_cls": "prefix_proj",
    "norm3.1": "norm_up",
    "adapter_up": "up",
    "ds_conv": "residual_conv",
}
ILA_KEY = re.compile(
    r"encoder\.(?P<family>ila_ds|ila)\.(?P<index>\d+)\.(?P<part>.+)"
    r"\.(?P<tensor>weight|bias|running_mean|running_var|num_batches_tracked)"
)


def _prepare(
    src: Path, args: argparse.Namespace, state: dict[str, torch.Tensor]
) -> tuple[Config, dict[str, torch.Tensor]]:
    placement = ila_placement(src, args, state)
    if "head.head.weight" not in state:
        raise ConversionError(f"{src}: no linear CLS head (head.head.weight) in its state_dict")
    return build_config(args, state, placement), map_state_dict(state, placement)


# Convert a release file `src` to an fgir checkpoint at `out` (see `Release.convert`).
convert_ila_reference = Release("an ILA release", _prepare).convert


def ila_placement(src: Path, args: argparse.Namespace, state: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    """{"ila_ds": blocks followed by a DS-ILA, "ila": blocks followed by a same-resolution ILA}, in
    depth order, checked against the modules the state_dict holds."""
    held = {family: {int(match["index"]) for key in state if (match := ILA_KEY.fullmatch(key))
                     and match["family"] == family} for family in ("ila_ds", "ila")}
    if not held["ila_ds"] and not held["ila"]:
        raise ConversionError(
            f"{src}: not an ILA release: its state_dict has no inter-layer adapter weights "
            f"(encoder.ila_ds.*, encoder.ila.*; model_name={getattr(args, 'model_name', '?')})"
        )
    problems = unsupported_settings(args, REQUIRED)
    if getattr(args, "adapter", None):  # ILA++'s adapters sit beside attention and MLP, on the normed tokens
        problems += unsupported_settings(args, {"adapter_path": "convpass"})
    if problems:
        raise ConversionError(f"{src}: not the ILA architecture fgir implements: {'; '.join(problems)}")
    depth = len({key.split(".")[2] for key in state if key.startswith("encoder.blocks.")})
    ds_locs = _setting(args, "ila_ds_locs", DEFAULT_DS_LOCS)
    same_locs = _setting(args, "ila_locs", ALL_OTHER_BLOCKS)
    if same_locs == ALL_OTHER_BLOCKS:
        same_locs = [index for index in range(depth) if index not in ds_locs]
    placement = {"ila_ds": sorted(ds_locs), "ila": sorted(same_locs)}
    if getattr(args, "adapter", None) and placement["ila"]:
        raise ConversionError(
            f"{src}: same-resolution ILAs (ila_locs={placement['ila']}) with in-block adapters "
            "(adapter=adapter): no fgir method has both (ILA+ or ILA++)"
        )
    for family, locs in placement.items():
        if held[family] != set(range(len(locs))):
            raise ConversionError(
                f"{src}: config {family}_locs={locs} places {len(locs)} modules, the state_dict holds "
                f"{len(held[family])} (encoder.{family}.*)"
            )
    return placement


def _setting(args: argparse.Namespace, key: str, default: list[int]) -> list[int]:
    value = getattr(args, key, None)
    return list(default if value is None else value)


def _dropout(args: argparse.Namespace) -> float:
    value = getattr(args, "hidden_dropout_prob", None)
    return 0.1 if value is None else float(value)  # the reference's default


def map_state_dict(state: dict[str, torch.Tensor], placement: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Reference names -> fgir names: the ViT and its in-block adapters, then the inter-layer
    adapters, `encoder.<family>.J` -> `inter_layer.<block of module J>`."""
    ila = {key: value for key, value in state.items() if ILA_KEY.fullmatch(key)}
    vit = {key: value for key, value in state.items() if key not in ila}
    out = map_reference_vit(vit, ILA_TOP_LEVEL, encoder_block, {**BLOCK_PARTS, **ADAPTER_PARTS})
    for key, value in ila.items():
        match = ILA_KEY.fullmatch(key)
        part = ILA_PARTS.get(match["part"])
        if part is None:
            out[key] = value  # reported by the strict load
            continue
        block = placement[match["family"]][int(match["index"])]
        if part == "prefix_proj" and match["tensor"] == "weight":
            value = value.flatten(1)  # a 1x1 convolution's (d, d, 1, 1) kernel is a (d, d) matrix
        out[f"inter_layer.{block}.{part}.{match['tensor']}"] = value
    return out


def build_config(
    args: argparse.Namespace, state: dict[str, torch.Tensor], placement: dict[str, list[int]]
) -> Config:
    """The fgir config of the reference run: method from where the adapters are, widths from the
    tensor shapes, the reference's test transform."""
    image_size, backbone_args = vit_architecture(state, args)
    if getattr(args, "adapter", None):
        method = "ila_pp"
    else:
        method = "ila_plus" if placement["ila"] else "ila"
    first = "ila_ds" if placement["ila_ds"] else "ila"
    peft: dict[str, Any] = {
        "bottleneck": state[f"encoder.{first}.0.adapter_down.weight"].shape[0],
        "dropout": _dropout(args),
        "ila_ds_layers": placement["ila_ds"],
        "ila_layers": placement["ila"] if method == "ila_plus" else None,
        # What the reference trained besides the adapters and the head (the Namespace's unfreeze_*).
        "train_cls_token": bool(getattr(args, "unfreeze_cls", True)),
        "train_pos_embed": bool(getattr(args, "unfreeze_positional_embedding", False)),
        "train_norm": bool(getattr(args, "unfreeze_encoder_norm", False)),
    }
    config = Config()
    config.data = reference_data(args, image_size, state["head.head.weight"].shape[0])
    config.model = model_config(method, backbone=BACKBONE, pretrained=False, backbone_args=backbone_args)
    for key, value in peft.items():  # the method's own section (fgir.models.ila.ILAConfig)
        setattr(config.model.peft, key, value)
    validate(config)
    return config
