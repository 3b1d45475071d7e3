"""Freezing a backbone for parameter-efficient training.

Two things every frozen-backbone method needs:
- `freeze_backbone`: no backbone parameter trains except the ones the config names (CLS token,
  position embedding, final norm);
- `FrozenBackboneModel.train`: the modules that were frozen stay in evaluation mode (dropout off,
  BatchNorm statistics fixed) while the modules a method adds train normally. Frozen modules are
  tagged when frozen, so modules inserted later (adapters, LoRA layers) are never affected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from fgir.config_fields import MethodSection
from fgir.models.backbone import Backbone

_FROZEN_TAG = "_fgir_frozen"


@dataclass
class FrozenBackboneConfig(MethodSection):
    """Frozen-backbone methods (ILA: arXiv 2409.11051, Section 3; and the PEFT baselines): the
    backbone is frozen; what else trains is listed here. Each method's section extends this one."""

    section: ClassVar[str] = "peft"

    train_cls_token: bool = True  # the reference trains the CLS token
    train_pos_embed: bool = False
    train_norm: bool = False  # the backbone's final LayerNorm
    # Frozen backbone modules (dropout, drop-path, BatchNorm) behave as in evaluation while the new
    # modules train; False: the whole model follows model.train().
    frozen_eval: bool = True


def freeze_backbone(backbone: Backbone, peft: FrozenBackboneConfig) -> None:
    """Stop gradients to every backbone parameter except those `peft` asks to train, and tag the
    backbone's modules so `FrozenBackboneModel` keeps them in evaluation mode."""
    backbone.requires_grad_(False)
    vit = backbone.vit
    if peft.train_cls_token and getattr(vit, "cls_token", None) is not None:
        vit.cls_token.requires_grad_(True)
    if peft.train_pos_embed and getattr(vit, "pos_embed", None) is not None:
        vit.pos_embed.requires_grad_(True)
    if peft.train_norm:
        vit.norm.requires_grad_(True)
    for module in backbone.modules():
        setattr(module, _FROZEN_TAG, peft.frozen_eval)


def frozen_by_freeze_backbone(module: nn.Module) -> bool:
    """Whether `module` belonged to a backbone when `freeze_backbone` froze it (modules inserted
    afterwards, such as adapters and LoRA layers, did not)."""
    return hasattr(module, _FROZEN_TAG)


class FrozenBackboneModel(nn.Module):
    """Base of frozen-backbone methods: `train(True)` leaves the tagged (frozen) modules in
    evaluation mode, one by one and not recursively, so a trainable module inserted inside a frozen
    one (an adapter in a block) still trains."""

    def train(self, mode: bool = True) -> FrozenBackboneModel:
        super().train(mode)
        if mode:
            for module in self.modules():
                if getattr(module, _FROZEN_TAG, False):
                    module.training = False
        return self

    def frozen_state_keys(self) -> set[str]:
        """State-dict keys of the frozen backbone tensors: the parameters that do not train, and the
        buffers, of the modules `freeze_backbone` tagged. Modules inserted later (adapters, LoRA
        layers, even inside a block) and trainable backbone parameters (CLS token...) are not among
        them. An adapter-only checkpoint leaves these out."""
        keys = set()
        for module_name, module in self.named_modules():
            if not frozen_by_freeze_backbone(module):
                continue
            prefix = f"{module_name}." if module_name else ""
            keys.update(prefix + name for name, p in module.named_parameters(recurse=False) if not p.requires_grad)
            keys.update(prefix + name for name, _ in module.named_buffers(recurse=False))
        return keys

    def canonical_key(self, key: str) -> str:
        """`key` as the plain backbone names it; methods whose library renames modules override this."""
        return key
