"""Convert the GLSim paper's released checkpoints (Hugging Face `NYCU-PCSxNTHU-MIS/GLSim`, trained with
the arkel23/GLSim code) into fgir checkpoints.

A release file is a pickle of {config: argparse.Namespace, epoch, model, accuracy, optimizer}, where
`model` is the state_dict of the reference's own ViT (`ViTGLSim` wrapped as `.model`): separate
query/key/value linears, `pwff` MLPs, a one-block `aggregator` Transformer over the two CLS tokens
(image and crop). The converted model is fgir's GLSim with the reference box arithmetic and a shared
CLS token for the crop pass, which is what the reference forward does, and the reference's test
transform (`reference_release.reference_data`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from fgir.config import Config, model_config, validate
from fgir.models.glsim import GLSimConfig
from fgir.tools.reference_release import (
    BACKBONE,
    TOP_LEVEL,
    ConversionError,
    Release,
    encoder_block,
    map_reference_vit,
    reference_data,
    unsupported_settings,
    vit_architecture,
)

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
GLSIM_TOP_LEVEL = {**TOP_LEVEL, "aggregator_norm": "aggregator.norm", "head": "head"}


def _prepare(
    src: Path, args: argparse.Namespace, state: dict[str, torch.Tensor]
) -> tuple[Config, dict[str, torch.Tensor]]:
    if "head.weight" not in state:
        raise ConversionError(f"{src}: not a reference ViT GLSim state_dict (no head.weight)")
    _check_supported(src, args)
    return build_config(args, state), map_state_dict(state)


# Convert a release file `src` to an fgir checkpoint at `out` (see `Release.convert`).
convert_glsim_reference = Release("a GLSim release", _prepare).convert


def _glsim_block(block: str) -> str | None:
    return "aggregator.block" if block == "aggregator.blocks.0" else encoder_block(block)


def map_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reference names -> fgir GLSim names (the encoder, the aggregator block and its norm, the head)."""
    kept = {key: value for key, value in state.items() if key not in UNUSED_KEYS}
    return map_reference_vit(kept, GLSIM_TOP_LEVEL, _glsim_block)


def build_config(args: argparse.Namespace, state: dict[str, torch.Tensor]) -> Config:
    """The fgir config of the reference run, with the reference's test transform."""
    image_size, backbone_args = vit_architecture(state, args)
    config = Config()
    config.data = reference_data(args, image_size, state["head.weight"].shape[0])
    config.model = model_config(
        "glsim",
        backbone=BACKBONE,
        pretrained=False,
        backbone_args=backbone_args,
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
    problems = unsupported_settings(args, REQUIRED)
    if getattr(args, "sim_metric", None) not in (None, *SIMILARITY):
        problems.append(f"sim_metric={args.sim_metric!r} (known: {', '.join(SIMILARITY)})")
    if getattr(args, "classifier", "cls") not in HEAD:
        problems.append(f"classifier={args.classifier!r} (known: {', '.join(HEAD)})")
    widths = {getattr(args, "representation_size", None), getattr(args, "hidden_size", None)} - {None}
    if len(widths) > 1:
        problems.append("representation_size differs from hidden_size (a reducer projection)")
    if problems:
        raise ConversionError(f"{src}: not the GLSim architecture fgir implements: {'; '.join(problems)}")
