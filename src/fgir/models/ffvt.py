"""FFVT (Wang et al., BMVC 2021, arXiv 2107.02341, Section 3; method `ffvt`), as the GLSim and ILA
papers' reference code runs it (arXiv 2407.12891, 2409.11051):

- Mutual attention weight selection (MAWS, Section 3.2) in each of blocks 0..L-2: with the scores
  before the softmax s (B, H, S, S), a token j's patch-to-CLS weight is softmax over the tokens i of
  s[i, 0] taken at i = j, its CLS-to-patch weight is the attention row of CLS, softmax over j of
  s[0, j]; both are averaged over the heads and multiplied. The K tokens (12) with the largest
  products are taken from the tokens leaving that block (the reference ranks every position, the
  CLS token's own included).
- Feature fusion (Section 3.1): the CLS token leaving block L-2 and the K (L - 1) selected tokens of
  all layers go through one new randomly initialised block and a new LayerNorm; the head reads the
  CLS token. No contrastive loss in the reference's FFVT runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from timm.layers import LayerNorm

from fgir.config import ModelConfig
from fgir.errors import ConfigError
from fgir.methods import register_method
from fgir.models.backbone import Backbone
from fgir.models.freezable import FreezableConfig
from fgir.models.part_fusion import PartFusionClassifier, check_depth, gather_tokens


@dataclass
class FFVTConfig(FreezableConfig):
    """FFVT (arXiv 2107.02341): MAWS token selection in every layer, fused in a last block; full
    fine-tuning by default (the GLSim paper's table), frozen for the ILA paper's."""

    section: ClassVar[str] = "ffvt"
    POSITIVE: ClassVar[tuple[str, ...]] = ("tokens_per_layer",)

    frozen: bool = False  # True: frozen backbone, the ILA table's setting; False: full fine-tuning
    tokens_per_layer: int = 12  # K (the reference doubles it for Stanford Dogs)


def maws_scores(scores: torch.Tensor) -> torch.Tensor:
    """(B, H, S, S) attention scores before the softmax -> (B, S) mutual attention weights."""
    patch_to_cls = scores[..., 0].softmax(dim=-1).mean(dim=1)  # softmax over the querying tokens
    cls_to_patch = scores[:, :, 0].softmax(dim=-1).mean(dim=1)
    return patch_to_cls * cls_to_patch


def check_tokens_per_layer(count: int, patches: int | None) -> None:
    """K may be at most the CLS token plus the patches of a layer."""
    if patches is not None and count > patches + 1:
        raise ConfigError(f"model.ffvt.tokens_per_layer={count} is more than the {patches + 1} tokens of a layer")


class FFVT(PartFusionClassifier):
    method = "ffvt"
    selector = "maws"

    def __init__(self, backbone: Backbone, num_classes: int, config: FFVTConfig, zero_init_head: bool = True):
        check_tokens_per_layer(config.tokens_per_layer, backbone.grid_size[0] * backbone.grid_size[1])
        super().__init__(backbone, num_classes, config, zero_init_head, norm=LayerNorm(backbone.embed_dim))
        self.tokens_per_layer = config.tokens_per_layer

    def select(self, layers: list[torch.Tensor], scores: list[torch.Tensor]) -> torch.Tensor:
        picked = [gather_tokens(tokens, maws_scores(layer).topk(self.tokens_per_layer, dim=-1).indices)
                  for tokens, layer in zip(layers, scores, strict=True)]
        return torch.cat([layers[-1][:, :1], *picked], dim=1)


def build_ffvt(backbone: Backbone, num_classes: int, model: ModelConfig) -> FFVT:
    return FFVT(backbone, num_classes, model.ffvt, zero_init_head=model.zero_init_head)


def check_ffvt(config, facts) -> None:
    """Depth and tokens per layer against the backbone, before any work."""
    check_depth("ffvt", facts.depth, config.model.backbone)
    check_tokens_per_layer(config.model.ffvt.tokens_per_layer, facts.patches)


register_method("ffvt", build=build_ffvt, config=FFVTConfig, check=check_ffvt)
