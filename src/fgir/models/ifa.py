"""IFA head (Intermediate Features Aggregation, Animesion: Rios et al., arXiv 2101.08674, Section 3;
method `vit_ifa`): the CLS token after
every encoder block, (B, D, L), reduced by a Linear over the layer axis (L -> 1: a learned weighted
sum of the layers shared by all channels), then ReLU, LayerNorm(D) and a linear classifier.

The per-layer CLS tokens are taken as the blocks output them, without the backbone's final norm: the
reference's ViT, built without its classifier, has no final norm at all, and the LayerNorm after
the weighted sum scales the aggregate anyway. The unused final norm is frozen.

Optional layer-wise exclusion loss: sum over i of KL(softmax(CLS_i / T) || softmax(CLS_{i+d} / T)),
softmax over the D channels and KL averaged over the batch, SUBTRACTED from the classification loss
with weight w * T^2: layers are rewarded for differing. It reaches the trainer through
`extra_loss(logits, targets)`, the value of the last training forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fgir.config import ModelConfig
from fgir.config_fields import MethodSection
from fgir.errors import ConfigError
from fgir.methods import register_method
from fgir.models.backbone import Backbone
from fgir.models.heads import LinearHead


@dataclass
class IFAConfig(MethodSection):
    """IFA head (arXiv 2101.08674, method vit_ifa): a learned weighted sum of every layer's CLS, ReLU,
    LayerNorm, Linear; optionally the layer-wise exclusion loss (off in the reference by default)."""

    section: ClassVar[str] = "ifa"
    POSITIVE: ClassVar[tuple[str, ...]] = ("temperature", "exclusion_distance")
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = ("exclusion_weight",)

    exclusion_loss: bool = False
    exclusion_weight: float = 0.01  # times temperature^2, subtracted from the classification loss
    temperature: float = 1.0
    exclusion_distance: int = 2  # layer i is compared with layer i + distance


def layer_exclusion(layer_cls: torch.Tensor, temperature: float, distance: int) -> torch.Tensor:
    """sum_i KL(P_i || P_{i+distance}) with P_i = softmax(layer_cls[..., i] / T) over channels,
    each KL averaged over the batch. `layer_cls`: (B, D, L)."""
    log_p = F.log_softmax(layer_cls / temperature, dim=1)
    earlier, later = log_p[..., :-distance], log_p[..., distance:]
    return (earlier.exp() * (earlier - later)).sum(dim=1).mean(dim=0).sum()


class IFAClassifier(nn.Module):
    def __init__(self, backbone: Backbone, num_classes: int, ifa: IFAConfig, zero_init_head: bool = True):
        super().__init__()
        if not backbone.has_cls_token:
            raise ConfigError(f"method vit_ifa aggregates every layer's CLS token, but {backbone.model_name} has none")
        if ifa.exclusion_loss and ifa.exclusion_distance >= backbone.num_blocks:
            raise ConfigError(f"model.ifa.exclusion_distance={ifa.exclusion_distance} leaves no pair of layers among "
                              f"the {backbone.num_blocks} blocks of {backbone.model_name}")
        self.backbone = backbone
        # Only the per-block CLS tokens are read, so the final norm never reaches the loss: frozen, it
        # is left out of the optimiser and DDP does not wait for its gradients.
        backbone.norm.requires_grad_(False)
        self.ifa = ifa
        self.layer_weights = nn.Linear(backbone.num_blocks, 1)
        self.norm = nn.LayerNorm(backbone.embed_dim, eps=1e-6)
        self.head = LinearHead(backbone.embed_dim, num_classes, zero_init=zero_init_head)
        self._exclusion: torch.Tensor | None = None

    def layer_cls(self, images: torch.Tensor) -> torch.Tensor:
        """(B, D, L): the CLS token after each of the L blocks."""
        _, layers = self.backbone.forward_tokens(images, return_layers=range(self.backbone.num_blocks))
        return torch.stack([layers[i][:, 0] for i in range(self.backbone.num_blocks)], dim=-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        layer_cls = self.layer_cls(images)
        aggregate = F.relu(self.layer_weights(layer_cls).squeeze(-1))
        self._exclusion = None
        if self.training and self.ifa.exclusion_loss:
            weight = self.ifa.exclusion_weight * self.ifa.temperature**2
            self._exclusion = -weight * layer_exclusion(layer_cls, self.ifa.temperature, self.ifa.exclusion_distance)
        return self.head(self.norm(aggregate))

    def extra_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
        """The signed term the trainer adds to the classification loss (minus the weighted
        exclusion loss, which needs no targets), or None when the loss is off or the last forward
        was not training."""
        return self._exclusion


def build_ifa(backbone: Backbone, num_classes: int, model: ModelConfig) -> nn.Module:
    return IFAClassifier(backbone, num_classes, model.ifa, zero_init_head=model.zero_init_head)


register_method("vit_ifa", build=build_ifa, config=IFAConfig)
