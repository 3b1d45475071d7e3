"""Recording a ViT's attention weights: timm's blocks use fused SDPA, which returns no weights, so for
the duration of one call each block's attention switches to timm's explicit path, where `attn_drop`
receives the softmaxed attention; a hook on `attn_drop` records it. The switch is undone afterwards,
also on error."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from fgir.models.backbone import Backbone
from fgir.models.layers.grid import Grid


@dataclass
class BlockAttention:
    """One block's attention over the tokens it ran on, and where the patch grid lies among them:
    methods add tokens (prompts, queries) or shrink the grid (DS-ILA), so the layout is per block."""

    weights: torch.Tensor  # (B, heads, T, T), rows softmax-normalised
    global_index: int | None  # the global (CLS) token's row; None: the mean of the patch rows stands in
    patch_start: int  # the first patch token; the grid's tokens follow it row-major
    grid: Grid

    def patch_map(self, rows: torch.Tensor) -> torch.Tensor:
        """(B, T) rows over this block's tokens -> (B, rows, columns) over its patch grid."""
        count = self.grid[0] * self.grid[1]
        return rows[:, self.patch_start : self.patch_start + count].reshape(rows.shape[0], *self.grid)

    def global_row(self, matrix: torch.Tensor) -> torch.Tensor:
        """(B, T, T) -> (B, T): what the global token attends to."""
        if self.global_index is not None:
            return matrix[:, self.global_index]
        count = self.grid[0] * self.grid[1]
        return matrix[:, self.patch_start : self.patch_start + count].mean(1)


Layout = Callable[[int], tuple[int | None, int, Grid]]  # block -> (global_index, patch_start, grid)


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


def plain_layout(backbone: Backbone, images: torch.Tensor) -> Layout:
    """A backbone's own token layout: prefix tokens (CLS first, if any), then the patch grid."""
    grid = backbone.grid_for(*images.shape[-2:])
    global_index = 0 if backbone.has_cls_token else None
    return lambda block: (global_index, backbone.num_prefix_tokens, grid)


def own_attention(model: nn.Module, backbone: Backbone, images: torch.Tensor, layout: Layout) -> list[BlockAttention]:
    """The attention of `model`'s first pass through `backbone`'s blocks (adapters, prompts and all),
    recorded while the model itself runs on `images`, with each block's token layout."""
    with torch.no_grad(), recorded_attention(backbone) as maps:
        model(images)
    return [BlockAttention(weights, *layout(index)) for index, weights in enumerate(maps[: backbone.num_blocks])]


def _attention_module(block: nn.Module, index: int) -> nn.Module:
    attention = getattr(block, "attn", None)
    if not (hasattr(attention, "fused_attn") and isinstance(getattr(attention, "attn_drop", None), nn.Module)):
        raise TypeError(
            f"block {index} ({type(block).__name__}) has no timm Attention with fused_attn and attn_drop; "
            "its attention weights cannot be recorded"
        )
    return attention
