"""The classifier shared by frozen-backbone methods: a frozen backbone, trainable modules between its
blocks (ILA) and/or inside them (adapters, attached to the blocks before this is built), and a linear
head on the pooled token.

Inter-layer modules take and return the patch grid with the tokens, so a module that down-samples
the grid (DS-ILA) tells the next one the new grid shape explicitly: nothing is guessed from a square
root, and rectangular grids work.

Blocks before the first trainable module run under `torch.no_grad()`. Autograd would record nothing
there anyway while no input needs gradients; making it explicit keeps it so, and a trainable CLS
token or position embedding (the embedding then needs gradients) switches it off by itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

import torch
from torch import nn

from fgir.models.backbone import Backbone
from fgir.models.heads import LinearHead
from fgir.models.layers.attention_capture import BlockAttention, own_attention
from fgir.models.layers.grid import Grid
from fgir.models.peft.freezing import FrozenBackboneModel

# Backbone parameters that are not part of the token embedding (everything else is: patch embedding,
# CLS and register tokens, position embedding, pre-norm).
_AFTER_EMBEDDING = ("blocks.", "norm.", "fc_norm.", "attn_pool.", "head.")


class InterLayerModule(Protocol):
    def __call__(self, tokens: torch.Tensor, grid: Grid) -> torch.Tensor: ...

    def output_grid(self, grid: Grid) -> Grid: ...


def _trains(module: nn.Module) -> bool:
    return any(parameter.requires_grad for parameter in module.parameters())


class FrozenClassifier(FrozenBackboneModel):
    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        *,
        zero_init_head: bool = True,
        inter_layer: Mapping[int, nn.Module] | None = None,
    ):
        """`inter_layer[i]` runs after block i (an `InterLayerModule`)."""
        super().__init__()
        inter_layer = dict(inter_layer or {})
        wrong = sorted(index for index in inter_layer if not 0 <= index < backbone.num_blocks)
        if wrong:
            raise ValueError(
                f"inter-layer modules after blocks {wrong}: outside 0..{backbone.num_blocks - 1} "
                f"of {backbone.model_name}"
            )
        self.backbone = backbone
        self.inter_layer = nn.ModuleDict({str(index): inter_layer[index] for index in sorted(inter_layer)})
        self.head = LinearHead(backbone.embed_dim, num_classes, zero_init=zero_init_head)
        # False runs every block with autograd on (tests compare the gradients of both ways).
        self.no_grad_frozen_prefix = True

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        grid = self.backbone.grid_for(images.shape[-2], images.shape[-1])
        self.before_blocks(grid)
        between = self._between(grid)
        frozen = self.frozen_prefix() if torch.is_grad_enabled() and self.no_grad_frozen_prefix else 0
        if frozen == 0:
            tokens = self.backbone.run_blocks(self.backbone.embed(images), 0, None, between)
        else:
            frozen_between = {index: fn for index, fn in between.items() if index < frozen - 1}
            with torch.no_grad():
                tokens = self.backbone.run_blocks(self.backbone.embed(images), 0, frozen, frozen_between)
            if frozen - 1 in between:
                tokens = between[frozen - 1](tokens)
            tokens = self.backbone.run_blocks(tokens, frozen, None, between)
        return self.head(self.backbone.pool(self.backbone.norm(tokens)))

    def before_blocks(self, grid: Grid) -> None:
        """Called with the image's patch grid before the blocks run (for modules inside blocks that
        need it, e.g. ConvPass)."""

    def frozen_prefix(self) -> int:
        """How many leading blocks need no gradients: nothing trainable in the embedding, in those
        blocks (in-block adapters included) or in the inter-layer modules between them. The module
        after the last of them, if any, is the first trainable one."""
        embedding = (
            parameter
            for name, parameter in self.backbone.vit.named_parameters()
            if not name.startswith(_AFTER_EMBEDDING)
        )
        if any(parameter.requires_grad for parameter in embedding):
            return 0
        for index, block in enumerate(self.backbone.blocks):
            if _trains(block):
                return index
            module = self.inter_layer[str(index)] if str(index) in self.inter_layer else None
            if module is not None and _trains(module):
                return index + 1
        return self.backbone.num_blocks

    def token_grids(self, grid: Grid) -> dict[int, Grid]:
        """{i: patch grid of the tokens leaving block i}, for an input grid `grid`."""
        grids = {}
        for index in range(self.backbone.num_blocks):
            if str(index) in self.inter_layer:
                grid = self.inter_layer[str(index)].output_grid(grid)
            grids[index] = grid
        return grids

    def attention_maps(self, images: torch.Tensor) -> list[BlockAttention]:
        """Each block's attention in this model's forward, on the grid it runs on (a DS-ILA shrinks it)."""
        grid = self.backbone.grid_for(images.shape[-2], images.shape[-1])
        entering = [grid, *self.token_grids(grid).values()]
        global_index = 0 if self.backbone.has_cls_token else None
        prefix = self.backbone.num_prefix_tokens
        return own_attention(self, self.backbone, images, lambda block: (global_index, prefix, entering[block]))

    def _between(self, grid: Grid) -> dict[int, Callable[[torch.Tensor], torch.Tensor]]:
        between = {}
        for key, module in self.inter_layer.items():
            between[int(key)] = _bind_grid(module, grid)
            grid = module.output_grid(grid)
        return between


def _bind_grid(module: nn.Module, grid: Grid) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda tokens: module(tokens, grid)
