"""Visual Prompt Tuning (Jia et al., ECCV 2022, arXiv 2203.12119) on a frozen backbone: methods `vpt_shallow` and
`vpt_deep`.

Learned prompt tokens sit right after the prefix tokens (CLS, registers) and before the patches, with
no position embedding. VPT-Shallow inserts them once, before block 0; VPT-Deep gives every block its
own prompts, replacing the previous block's prompt outputs. Prompts never reach the head: they are
dropped before the final norm, so the backbone pools (CLS token, or the patch mean) as it always does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from fgir.config import ModelConfig
from fgir.methods import register_method
from fgir.models.backbone import Backbone
from fgir.models.heads import LinearHead
from fgir.models.layers.attention_capture import BlockAttention, own_attention, plain_layout
from fgir.models.peft.freezing import FrozenBackboneConfig, FrozenBackboneModel, freeze_backbone


@dataclass
class VPTConfig(FrozenBackboneConfig):
    """VPT (arXiv 2203.12119, Section 3.2): learned prompt tokens on the frozen backbone."""

    POSITIVE: ClassVar[tuple[str, ...]] = ("prompt_length",)
    FRACTIONS: ClassVar[tuple[str, ...]] = ("prompt_dropout",)

    prompt_length: int = 100  # VPT prompt tokens (per layer for VPT-Deep)
    prompt_dropout: float = 0.0


class PromptedViT(FrozenBackboneModel):
    def __init__(self, backbone: Backbone, num_classes: int, model: ModelConfig, deep: bool):
        super().__init__()
        peft = model.peft
        freeze_backbone(backbone, peft)
        self.backbone = backbone
        self.deep = deep
        layers = backbone.num_blocks if deep else 1
        self.prompts = nn.Parameter(torch.empty(layers, peft.prompt_length, backbone.embed_dim))
        # VPT's init: uniform with the fan-in of the patch embedding (in_chans x patch area) + width.
        fan_in = backbone.vit.patch_embed.proj.in_channels * math.prod(backbone.patch_size)
        bound = math.sqrt(6.0 / (fan_in + backbone.embed_dim))
        nn.init.uniform_(self.prompts, -bound, bound)
        self.prompt_dropout = nn.Dropout(peft.prompt_dropout)
        self.head = LinearHead(backbone.embed_dim, num_classes, zero_init=model.zero_init_head)

    @property
    def prompt_length(self) -> int:
        return self.prompts.shape[1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.with_prompts(self.backbone.embed(images), 0, replace=False)
        between = None
        if self.deep:  # after block i, block i + 1's prompts replace the prompt outputs
            between = {index: self._prompts_of(index + 1) for index in range(self.backbone.num_blocks - 1)}
        tokens = self.backbone.run_blocks(tokens, between=between)
        tokens = self.backbone.norm(self.without_prompts(tokens))
        return self.head(self.backbone.pool(tokens))

    def attention_maps(self, images: torch.Tensor) -> list[BlockAttention]:
        """Each block's attention in this model's forward: the prompts sit between prefix and patches."""
        global_index, prefix, grid = plain_layout(self.backbone, images)(0)
        return own_attention(self, self.backbone, images, lambda block: (global_index, prefix + self.prompt_length, grid))

    def with_prompts(self, tokens: torch.Tensor, layer: int, replace: bool) -> torch.Tensor:
        """Put layer `layer`'s prompts after the prefix tokens, in place of the current prompts if
        `replace`, else inserted."""
        prefix = self.backbone.num_prefix_tokens
        prompts = self.prompt_dropout(self.prompts[layer]).expand(tokens.shape[0], -1, -1)
        rest = prefix + self.prompt_length if replace else prefix
        return torch.cat([tokens[:, :prefix], prompts.to(tokens.dtype), tokens[:, rest:]], dim=1)

    def without_prompts(self, tokens: torch.Tensor) -> torch.Tensor:
        prefix = self.backbone.num_prefix_tokens
        return torch.cat([tokens[:, :prefix], tokens[:, prefix + self.prompt_length :]], dim=1)

    def _prompts_of(self, layer: int):
        return lambda tokens: self.with_prompts(tokens, layer, replace=True)


def build_vpt_shallow(backbone: Backbone, num_classes: int, model: ModelConfig) -> nn.Module:
    return PromptedViT(backbone, num_classes, model, deep=False)


def build_vpt_deep(backbone: Backbone, num_classes: int, model: ModelConfig) -> nn.Module:
    return PromptedViT(backbone, num_classes, model, deep=True)


register_method("vpt_shallow", build=build_vpt_shallow, config=VPTConfig)
register_method("vpt_deep", build=build_vpt_deep, config=VPTConfig)
