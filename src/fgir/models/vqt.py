"""Visual Query Tuning (Tu et al., CVPR 2023, arXiv 2212.03220, Section 3; method `vqt`) on a frozen
backbone: learned query tokens summarise every layer's tokens for the head.

Each block i gets its own T learned queries, prepended to its input tokens. In that block the queries
attend to the layer's tokens but not to each other, and the tokens do not attend to the queries (the
reference's attention with keys and values taken from the tokens only; here the same through a mask),
so the backbone's own computation is unchanged. The queries' outputs leave after the block: they
never enter the next one. The head of the reference (the ILA paper's comparison, arXiv 2409.11051,
Table 1) reads the concatenation of every layer's T outputs, each layer's flattened (T * D) vector
L2-normalised, and the L2-normalised pooled token after the final norm: a linear map from
L * T * D + D features. Queries start uniform with VPT's bound sqrt(6 / (3 * patch area + D)) and pass
through dropout (0.1 in the reference).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fgir.config import ModelConfig
from fgir.methods import register_method
from fgir.models.backbone import Backbone
from fgir.models.checkpointing import run_block
from fgir.models.heads import LinearHead
from fgir.models.layers.attention_capture import BlockAttention, own_attention, plain_layout
from fgir.models.peft.freezing import FrozenBackboneConfig, FrozenBackboneModel, freeze_backbone


@dataclass
class VQTConfig(FrozenBackboneConfig):
    """VQT (arXiv 2212.03220): T learned query tokens per layer of the frozen backbone."""

    section: ClassVar[str] = "vqt"
    POSITIVE: ClassVar[tuple[str, ...]] = ("query_tokens",)
    FRACTIONS: ClassVar[tuple[str, ...]] = ("query_dropout",)

    # T per layer. The reference shares VPT's default of 100 (a head of 922 K inputs on ViT-B); 5 is
    # what the ILA table's 106.0 M trainable parameters imply (T = 5.1 with the class count its
    # MPN-COV, TransFG and FFVT rows imply).
    query_tokens: int = 5
    query_dropout: float = 0.1  # dropout on the queries before each block (the reference: 0.1)


def tokens_ignore_queries(queries: int, tokens: int, device: torch.device) -> torch.Tensor:
    """(queries + tokens)^2 attention mask, True where attending is allowed: every row sees the
    tokens only, never a query."""
    allowed = torch.ones(queries + tokens, queries + tokens, dtype=torch.bool, device=device)
    allowed[:, :queries] = False
    return allowed


class QueryTunedViT(FrozenBackboneModel):
    def __init__(self, backbone: Backbone, num_classes: int, config: VQTConfig, zero_init_head: bool = True):
        super().__init__()
        freeze_backbone(backbone, config)
        self.backbone = backbone
        dim, layers = backbone.embed_dim, backbone.num_blocks
        self.queries = nn.Parameter(torch.empty(layers, config.query_tokens, dim))
        fan_in = backbone.vit.patch_embed.proj.in_channels * math.prod(backbone.patch_size)
        bound = math.sqrt(6.0 / (fan_in + dim))
        nn.init.uniform_(self.queries, -bound, bound)
        self.query_dropout = nn.Dropout(config.query_dropout)
        self.head = LinearHead(layers * config.query_tokens * dim + dim, num_classes, zero_init=zero_init_head)

    @property
    def query_tokens(self) -> int:
        return self.queries.shape[1]

    def summaries(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """([each layer's query outputs (B, T, D)], tokens after the last block (B, S, D))."""
        tokens = self.backbone.embed(images)
        mask = tokens_ignore_queries(self.query_tokens, tokens.shape[1], tokens.device)
        outputs = []
        for index, block in enumerate(self.backbone.blocks):
            queries = self.query_dropout(self.queries[index]).expand(tokens.shape[0], -1, -1).to(tokens.dtype)
            joined = run_block(self.backbone, block, torch.cat([queries, tokens], dim=1), attn_mask=mask)
            outputs.append(joined[:, : self.query_tokens])
            tokens = joined[:, self.query_tokens :]
        return outputs, tokens

    def attention_maps(self, images: torch.Tensor) -> list[BlockAttention]:
        """Each block's attention in this model's forward: the queries come first in every block."""
        global_index, prefix, grid = plain_layout(self.backbone, images)(0)
        shifted = None if global_index is None else global_index + self.query_tokens
        return own_attention(self, self.backbone, images, lambda block: (shifted, prefix + self.query_tokens, grid))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        outputs, tokens = self.summaries(images)
        pooled = self.backbone.pool(self.backbone.norm(tokens))
        features = [F.normalize(output.flatten(1), dim=-1) for output in outputs]
        return self.head(torch.cat([*features, F.normalize(pooled, dim=-1)], dim=1))


def build_vqt(backbone: Backbone, num_classes: int, model: ModelConfig) -> QueryTunedViT:
    return QueryTunedViT(backbone, num_classes, model.vqt, zero_init_head=model.zero_init_head)


register_method("vqt", build=build_vqt, config=VQTConfig)
