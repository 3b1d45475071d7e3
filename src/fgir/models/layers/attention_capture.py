"""Recording a ViT's attention weights: timm's blocks use fused SDPA, which returns no weights, so for
the duration of one call each block's attention switches to timm's explicit path, where `attn_drop`
receives the softmaxed attention; a hook on `attn_drop` records it. The switch is undone afterwards,
also on error."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from fgir.models.backbone import Backbone


@contextlib.contextmanager
def recorded_attention(backbone: Backbone) -> Iterator[list[torch.Tensor]]:
    """Within the block, every forward pass through `backbone` appends each block's attention
    (B, heads, T, T) to the yielded list, in block order."""
    modules = [_attention_module(block, index) for index, block in enumerate(backbone.blocks)]
    flags = [module.fused_attn for module in modules]
    maps: list[torch.Tensor] = []
    handles = []
    try:
        for module in modules:
            module.fused_attn = False
            handles.append(module.attn_drop.register_forward_pre_hook(
                lambda _module, args: maps.append(args[0].detach().float())))
        yield maps
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in zip(modules, flags, strict=True):
            module.fused_attn = flag


def attention_matrices(backbone: Backbone, images: torch.Tensor) -> list[torch.Tensor]:
    """Each block's attention (B, heads, T, T) for `images`; run the backbone in eval mode so that
    neither dropout nor drop-path changes the tokens."""
    with torch.no_grad(), recorded_attention(backbone) as maps:
        backbone.forward_features(images)
    return maps


def _attention_module(block: nn.Module, index: int) -> nn.Module:
    attention = getattr(block, "attn", None)
    if not (hasattr(attention, "fused_attn") and isinstance(getattr(attention, "attn_drop", None), nn.Module)):
        raise TypeError(
            f"block {index} ({type(block).__name__}) has no timm Attention with fused_attn and attn_drop; "
            "its attention weights cannot be recorded"
        )
    return attention
