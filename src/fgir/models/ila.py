"""ILA (Rios et al., arXiv 2409.11051, Section 3): inter-layer adapters on the residual stream of a frozen ViT, between blocks.

The down-sampling ILA (DS-ILA) shrinks the patch grid by 2 rows and 2 columns with valid 3x3
convolutions, so the blocks after it process fewer tokens; the same-resolution ILA keeps the grid.
Methods: `ila` (DS-ILAs only), `ila_plus` (same-resolution ILAs after the other blocks + DS-ILAs),
`ila_pp` (parallel bottleneck adapters beside attention and MLP in every block + DS-ILAs).

Decisions where the paper and its code leave room:
- Prefix tokens: the CLS token and any register tokens are treated alike: in the adapter branch each
  goes through the CLS projection (the reference's 1x1 convolution on a 1x1 map, i.e. a d->d linear
  map); in the residual branch they pass unchanged.
- The up-projection starts at zero, so at the start a same-resolution ILA is the identity and a DS-ILA
  is a 3x3 sum pool of the patch tokens (the reference re-initialises it randomly).
- Frozen backbone modules stay in evaluation mode; the ILA BatchNorms train and update their running
  statistics (`FrozenBackboneModel`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fgir.config import ConfigError, ModelConfig
from fgir.methods import register_method
from fgir.models.backbone import Backbone
from fgir.models.layers.bottleneck_adapter import BottleneckAdapter
from fgir.models.layers.inter_layer_adapter import InterLayerAdapter
from fgir.models.peft.adapters import AdapterConfig, attach_parallel_adapters
from fgir.models.peft.freezing import freeze_backbone
from fgir.models.peft.frozen_classifier import FrozenClassifier


@dataclass
class ILAConfig(AdapterConfig):
    """ILA, ILA+ and ILA++ (arXiv 2409.11051, Section 3): where the inter-layer adapters go."""

    ila_ds_layers: list[int] = field(default_factory=lambda: [3, 7])  # DS-ILA after these blocks (0-based)
    # Same-resolution ILAs of ILA+ after these blocks; None: after every block without a DS-ILA
    # (10 for ViT-B/16 with [3, 7]: the paper's 174.6 K parameters).
    ila_layers: list[int] | None = None


def _check_indices(indices: list[int], key: str, depth: int, model_name: str) -> list[int]:
    wrong = [index for index in indices if not 0 <= index < depth]
    if wrong:
        raise ConfigError(f"model.peft.{key}: block indices {wrong} outside 0..{depth - 1} of {model_name}")
    repeated = sorted({index for index in indices if indices.count(index) > 1})
    if repeated:
        raise ConfigError(f"model.peft.{key}: block indices {repeated} given more than once")
    return sorted(indices)


def ila_placement(
    peft: ILAConfig, depth: int, model_name: str, *, same_resolution: bool
) -> tuple[list[int], list[int]]:
    """(blocks followed by a DS-ILA, blocks followed by a same-resolution ILA). By default the
    same-resolution ILAs go after every block that has no DS-ILA: with DS-ILAs after blocks 3 and 7
    of ViT-B/16, 10 of them, the 174.6 K trainable parameters of the spec's ILA+."""
    downsampling = _check_indices(list(peft.ila_ds_layers), "ila_ds_layers", depth, model_name)
    if not same_resolution:
        return downsampling, []
    if peft.ila_layers is None:
        return downsampling, [index for index in range(depth) if index not in downsampling]
    same = _check_indices(list(peft.ila_layers), "ila_layers", depth, model_name)
    both = sorted(set(same) & set(downsampling))
    if both:
        raise ConfigError(
            f"model.peft.ila_layers and model.peft.ila_ds_layers both place an ILA after blocks {both}; "
            "one ILA per block"
        )
    return downsampling, same


def _build(
    backbone: Backbone, num_classes: int, model: ModelConfig, *, same_resolution: bool, in_block: bool
) -> FrozenClassifier:
    peft = model.peft
    freeze_backbone(backbone, peft)
    downsampling, same = ila_placement(peft, backbone.num_blocks, backbone.model_name, same_resolution=same_resolution)

    def ila(downsample: bool) -> InterLayerAdapter:
        return InterLayerAdapter(
            backbone.embed_dim,
            backbone.num_prefix_tokens,
            downsample=downsample,
            bottleneck=peft.bottleneck,
            dropout=peft.dropout,
        )

    inter_layer = {index: ila(True) for index in downsampling} | {index: ila(False) for index in same}
    if in_block:
        attach_parallel_adapters(
            backbone, lambda: BottleneckAdapter(backbone.embed_dim, peft.bottleneck, dropout=peft.dropout)
        )
    return FrozenClassifier(
        backbone, num_classes, zero_init_head=model.zero_init_head, inter_layer=inter_layer
    )


def build_ila(backbone: Backbone, num_classes: int, model: ModelConfig) -> FrozenClassifier:
    """ILA: DS-ILAs after `model.peft.ila_ds_layers` only."""
    return _build(backbone, num_classes, model, same_resolution=False, in_block=False)


def build_ila_plus(backbone: Backbone, num_classes: int, model: ModelConfig) -> FrozenClassifier:
    """ILA+: DS-ILAs + same-resolution ILAs (`ila_placement`)."""
    return _build(backbone, num_classes, model, same_resolution=True, in_block=False)


def build_ila_pp(backbone: Backbone, num_classes: int, model: ModelConfig) -> FrozenClassifier:
    """ILA++: DS-ILAs + parallel bottleneck adapters beside attention and MLP in every block."""
    return _build(backbone, num_classes, model, same_resolution=False, in_block=True)


def _placement_check(same_resolution: bool):
    def check(config, facts) -> None:
        """The ILA block indices fit the backbone's depth, before any work."""
        if facts.depth is not None:
            ila_placement(config.model.peft, facts.depth, config.model.backbone, same_resolution=same_resolution)

    return check


register_method("ila", build=build_ila, config=ILAConfig, check=_placement_check(False))
register_method("ila_plus", build=build_ila_plus, config=ILAConfig, check=_placement_check(True))
register_method("ila_pp", build=build_ila_pp, config=ILAConfig, check=_placement_check(False))
