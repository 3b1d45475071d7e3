"""In-block adapters on a frozen ViT: parallel bottleneck adapters (ADPT, AdaptFormer-style, arXiv
2205.13535; also the in-block part of ILA++) and ConvPass (arXiv 2208.07463: a 3x3 convolution on the
patch grid inside the bottleneck).

An adapter sits beside a block's attention and beside its MLP: it reads what the sub-layer reads
(the normed tokens) and its output is added to the sub-layer's output. It is attached with a forward
hook on `block.attn` / `block.mlp` and stored as `block.attn_adapter` / `block.mlp_adapter`, so timm's
Block is not forked and every original module and parameter keeps its name and type (LoRA targets,
attention probes and weight loading see the plain ViT). The adapter output goes through the block's
layer scale and drop path with the sub-layer's (both identities in the original ViT-B/16).

Up-projections start at zero, so an adapted model starts as the frozen model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from fgir.config import ModelConfig
from fgir.methods import register_method
from fgir.models.backbone import Backbone
from fgir.models.layers.bottleneck_adapter import BottleneckAdapter, ParallelAdapter
from fgir.models.layers.conv_pass import ConvPass
from fgir.models.layers.grid import Grid
from fgir.models.peft.freezing import FrozenBackboneConfig, freeze_backbone
from fgir.models.peft.frozen_classifier import FrozenClassifier

SITES = ("attn", "mlp")


@dataclass
class AdapterConfig(FrozenBackboneConfig):
    """Bottleneck modules on the frozen backbone (adapters, ConvPass; the ILA family extends it)."""

    POSITIVE: ClassVar[tuple[str, ...]] = ("bottleneck",)
    FRACTIONS: ClassVar[tuple[str, ...]] = ("dropout",)

    bottleneck: int = 8  # hidden width of bottleneck adapters, ConvPass and ILA modules
    dropout: float = 0.1  # dropout at the output of adapters and ILA modules


def attach_parallel_adapters(
    backbone: Backbone, make_adapter: Callable[[], ParallelAdapter], sites: tuple[str, ...] = SITES
) -> list[ParallelAdapter]:
    """Put a new adapter beside `block.<site>` for every block and site; returns them in block
    order. Call after `freeze_backbone` (adapters attached later are not frozen)."""
    unknown = [site for site in sites if site not in SITES]
    if unknown:
        raise ValueError(f"adapter sites {unknown}: known sites are {list(SITES)}")
    adapters = []
    for index, block in enumerate(backbone.blocks):
        for site in sites:
            sublayer = getattr(block, site, None)
            if not isinstance(sublayer, nn.Module):
                raise ValueError(
                    f"{backbone.model_name} block {index} ({type(block).__name__}) has no '{site}' module "
                    "to put an adapter beside"
                )
            if hasattr(block, f"{site}_adapter"):
                raise ValueError(f"{backbone.model_name} block {index} already has a '{site}_adapter'")
            adapter = make_adapter()
            block.add_module(f"{site}_adapter", adapter)
            sublayer.register_forward_hook(adapter.add_to_output)
            adapters.append(adapter)
    return adapters


class ConvPassClassifier(FrozenClassifier):
    """A frozen classifier whose ConvPass adapters learn the patch grid of each batch."""

    def __init__(
        self, backbone: Backbone, num_classes: int, adapters: list[ConvPass], *, zero_init_head: bool
    ):
        super().__init__(backbone, num_classes, zero_init_head=zero_init_head)
        self._convpass = adapters  # plain list: the modules are registered in the blocks already

    def before_blocks(self, grid: Grid) -> None:
        for adapter in self._convpass:
            adapter.grid = grid


def build_adapter(backbone: Backbone, num_classes: int, model: ModelConfig) -> FrozenClassifier:
    """ADPT: parallel bottleneck adapters beside attention and MLP in every block."""
    peft = model.peft
    freeze_backbone(backbone, peft)
    attach_parallel_adapters(
        backbone, lambda: BottleneckAdapter(backbone.embed_dim, peft.bottleneck, dropout=peft.dropout)
    )
    return FrozenClassifier(backbone, num_classes, zero_init_head=model.zero_init_head)


def build_convpass(backbone: Backbone, num_classes: int, model: ModelConfig) -> FrozenClassifier:
    """ConvPass beside attention and MLP in every block."""
    peft = model.peft
    freeze_backbone(backbone, peft)
    adapters = attach_parallel_adapters(
        backbone,
        lambda: ConvPass(
            backbone.embed_dim, backbone.num_prefix_tokens, peft.bottleneck, dropout=peft.dropout
        ),
    )
    return ConvPassClassifier(backbone, num_classes, adapters, zero_init_head=model.zero_init_head)


register_method("adapter", build=build_adapter, config=AdapterConfig)
register_method("convpass", build=build_convpass, config=AdapterConfig)
