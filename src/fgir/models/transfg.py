"""TransFG (He et al., AAAI 2022, arXiv 2103.07976, Section 3; method `transfg`), as the GLSim and ILA
papers' reference code runs it (arXiv 2407.12891, 2409.11051):

- Part selection module (Section 3.2): the softmax attention maps A_l (B, H, S, S) of blocks
  0..L-2 are multiplied, A = A_{L-2} ... A_1 A_0; for each head, the patch (CLS excluded) with the
  largest value in A's CLS row is selected, from the tokens leaving block L-2: H part tokens.
- The CLS token and the H part tokens go through one new randomly initialised block (the
  reference's part layer), then the backbone's pretrained final norm; the head reads the CLS token.
- Contrastive loss (Section 3.3) on those normalised CLS features f (L2-normalised within the loss):
  sum over pairs of the same class of 1 - cos(f_i, f_j), plus over pairs of different classes of
  max(0, cos(f_i, f_j) - 0.4), divided by B^2; added with weight 0.1 as the reference trains it
  (`extra_loss`). Under mixup or cutmix the pairs are judged by each sample's dominant class.
- Overlapping patch embedding (Section 3.1), optional as in the reference: the patch convolution
  slides by `overlap_stride` (12) instead of the patch size; the position embedding is resampled to
  the new grid.

The two references differ in the last two: the GLSim paper's TransFG runs with overlapping patches
(stride 12) and the contrastive loss, the ILA paper's (its method config) with neither, i.e.
`overlap_stride=12` for the first and `contrastive_weight=0` for the second.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from torch import nn

from fgir.config import ModelConfig
from fgir.errors import ConfigError
from fgir.methods import register_method
from fgir.models.backbone import Backbone
from fgir.models.freezable import FreezableConfig
from fgir.models.part_fusion import PartFusionClassifier, check_depth, gather_tokens


@dataclass
class TransFGConfig(FreezableConfig):
    """TransFG (arXiv 2103.07976): part selection by attention products, contrastive loss; full
    fine-tuning by default (the GLSim paper's table), frozen for the ILA paper's."""

    section: ClassVar[str] = "transfg"
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = ("contrastive_weight", "overlap_stride")
    FRACTIONS: ClassVar[tuple[str, ...]] = ("margin",)

    frozen: bool = False  # True: frozen backbone, the ILA table's setting; False: full fine-tuning
    contrastive_weight: float = 0.1  # 0: no contrastive loss (the ILA paper's runs)
    margin: float = 0.4  # cosine below which different classes cost nothing
    overlap_stride: int = 0  # stride of overlapping patches (12: the paper and GLSim's runs); 0: off (ILA's)


def part_attention(probabilities: list[torch.Tensor]) -> torch.Tensor:
    """(B, H, S, S) softmax maps of blocks 0..L-2 -> their product A_{L-2} ... A_0."""
    product = probabilities[0]
    for layer in probabilities[1:]:
        product = layer @ product
    return product


def select_parts(probabilities: list[torch.Tensor]) -> torch.Tensor:
    """(B, H): per head, the token index (CLS = 0 excluded) of the largest CLS-row entry of the product."""
    return part_attention(probabilities)[:, :, 0, 1:].argmax(dim=-1) + 1


def contrastive_loss(features: torch.Tensor, labels: torch.Tensor, margin: float = 0.4) -> torch.Tensor:
    """TransFG's contrastive loss over a batch of features (B, D) with class indices (B,)."""
    unit = F.normalize(features.float(), dim=-1)
    cosine = unit @ unit.T
    same = labels[:, None] == labels[None, :]
    cost = torch.where(same, 1 - cosine, (cosine - margin).clamp_min(0))
    return cost.sum() / labels.shape[0] ** 2


def check_overlap(stride: int, patch: tuple[int, int] | None) -> None:
    if stride and patch is not None and stride > min(patch):
        raise ConfigError(f"model.transfg.overlap_stride={stride} is larger than the patch size {patch[0]}: "
                          "patches would leave gaps, not overlap")


def use_overlapping_patches(backbone: Backbone, stride: int) -> None:
    """Make the patch embedding slide by `stride` and resample the position embedding to its grid."""
    vit, patch = backbone.vit, backbone.patch_size
    if getattr(vit, "dynamic_img_size", False) or not vit.patch_embed.strict_img_size:
        raise ConfigError("model.transfg.overlap_stride needs a backbone built for one image size "
                          "(no dynamic_img_size)")
    check_overlap(stride, patch)
    old = backbone.grid_size
    height, width = vit.patch_embed.img_size
    new = ((height - patch[0]) // stride + 1, (width - patch[1]) // stride + 1)
    vit.patch_embed.proj.stride = (stride, stride)
    vit.patch_embed.grid_size = new
    vit.patch_embed.num_patches = new[0] * new[1]
    with torch.no_grad():
        resampled = resample_abs_pos_embed(vit.pos_embed.data, list(new), list(old),
                                           num_prefix_tokens=0 if vit.no_embed_class else vit.num_prefix_tokens)
    vit.pos_embed = nn.Parameter(resampled, requires_grad=vit.pos_embed.requires_grad)


class TransFG(PartFusionClassifier):
    method = "transfg"
    selector = "psm"

    def __init__(self, backbone: Backbone, num_classes: int, config: TransFGConfig, zero_init_head: bool = True):
        if config.overlap_stride:
            use_overlapping_patches(backbone, config.overlap_stride)
        super().__init__(backbone, num_classes, config, zero_init_head)
        self.config = config
        self._features: torch.Tensor | None = None

    def select(self, layers: list[torch.Tensor], scores: list[torch.Tensor]) -> torch.Tensor:
        tokens = layers[-1]
        parts = gather_tokens(tokens, select_parts([layer.softmax(dim=-1) for layer in scores]))
        return torch.cat([tokens[:, :1], parts], dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.features(images)
        self._features = features if self.training and self.config.contrastive_weight else None
        return self.head(features)

    def extra_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
        """The weighted contrastive loss of the last training forward's CLS features (None otherwise)."""
        if self._features is None:
            return None
        labels = targets.argmax(dim=1) if targets.ndim == 2 else targets
        return self.config.contrastive_weight * contrastive_loss(self._features, labels, self.config.margin)


def build_transfg(backbone: Backbone, num_classes: int, model: ModelConfig) -> TransFG:
    return TransFG(backbone, num_classes, model.transfg, zero_init_head=model.zero_init_head)


def check_transfg(config, facts) -> None:
    """Depth and overlap stride against the backbone, before any work."""
    check_depth("transfg", facts.depth, config.model.backbone)
    check_overlap(config.model.transfg.overlap_stride, facts.patch_size)


register_method("transfg", build=build_transfg, config=TransFGConfig, check=check_transfg)
