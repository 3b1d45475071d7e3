"""Methods that run in both settings of the ILA paper's comparison (arXiv 2409.11051, Table 1):
parameter-efficient on a frozen backbone, where only the method's modules (and what the frozen-backbone
keys name) train and checkpoints hold only those, or full fine-tuning of every weight."""

from __future__ import annotations

from dataclasses import dataclass

from fgir.models.backbone import Backbone
from fgir.models.peft.freezing import FrozenBackboneConfig, freeze_backbone


@dataclass
class FreezableConfig(FrozenBackboneConfig):
    """The frozen-backbone keys plus `frozen`; each method's section extends it (and names itself)."""

    frozen: bool = True  # False: full fine-tuning, the other keys of this section are then unused


def freeze_if_asked(backbone: Backbone, config: FreezableConfig) -> None:
    """Freeze the backbone as `freeze_backbone` does when `config.frozen`; else leave it all trainable.
    An unfrozen backbone carries no frozen tags, so `FrozenBackboneModel` then behaves as a plain module
    (every module follows `train()`, no key is left out of checkpoints)."""
    if config.frozen:
        freeze_backbone(backbone, config)
