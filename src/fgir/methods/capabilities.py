"""What a model can offer beyond `model(images) -> logits`, as small protocols that the engine, the
tools and the app ask for (`isinstance(model, Explains)`), never a method's class or name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass
class Explanation:
    """Where a model looked, for figures and the demo; the training contract only uses `logits`."""

    logits: torch.Tensor  # (B, classes)
    scores: torch.Tensor | None = None  # (B, N) a score per patch, row-major over the patch grid
    boxes: torch.Tensor | None = None  # (B, 4) pixel x0, y0, x1, y1 of the region looked at (x1, y1 exclusive)
    crops: torch.Tensor | None = None  # (B, C, H, W) that region resized, when the model re-encodes it
    selected: int | None = None  # how many patches the box was drawn around
    score_name: str = "GLS similarity"  # what `scores` measure, the title of their map


@runtime_checkable
class Explains(Protocol):
    def explain(self, images: torch.Tensor) -> Explanation: ...


@runtime_checkable
class HasAttentionMaps(Protocol):
    def attention_maps(self, images: torch.Tensor) -> list:
        """Each block's `BlockAttention` in the model's own forward, where its tokens differ from
        the plain backbone's (added tokens, a shrinking grid, blocks run outside timm's attention)."""
        ...


@runtime_checkable
class HasExtraLoss(Protocol):
    def extra_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
        """The term added to the classification loss after a training forward (None: nothing);
        `targets` are class indices, or mixed soft targets under mixup and cutmix."""
        ...


@runtime_checkable
class HasFrozenBackbone(Protocol):
    def frozen_state_keys(self) -> set[str]:
        """State-dict keys of the frozen pretrained tensors: what an adapter-only checkpoint leaves out."""
        ...

    def canonical_key(self, key: str) -> str:
        """A state-dict key as the plain backbone names it (without names a method's library
        inserts), so every method on one backbone hashes its frozen tensors alike."""
        ...


@runtime_checkable
class SelectsRegions(Protocol):
    """A selection step between two encoder passes (GLSim's GLS crop, RAMS-Trans's rollout crop),
    timed apart by `fgir bench`."""

    def selection_input(self, images: torch.Tensor) -> object:
        """What `select` reads from the first encoder pass (GLSim: the tokens; RAMS-Trans: the
        blocks' attention)."""
        ...

    def select(self, images: torch.Tensor, first_pass: object) -> tuple: ...

    def selection_flops(self, image_size: tuple[int, int]) -> int: ...


@runtime_checkable
class SelectsTokens(Protocol):
    """A token or region selector that reads attention maps or tokens (TransFG's PSM, FFVT's MAWS,
    GLSim's GLS, attention rollout), costed by `fgir bench` through `fgir.tools.selector_cost`."""

    def selector_shape(self) -> tuple[str, int, int, int, int]:
        """(selector name in `fgir.tools.selector_cost.SELECTORS`, tokens, heads, maps or layers
        read, token width) at the image size the backbone was built for."""
        ...


def extra_loss(model: object, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
    return model.extra_loss(logits, targets) if isinstance(model, HasExtraLoss) else None


def frozen_state_keys(model: object) -> set[str]:
    """The frozen backbone keys of a frozen-backbone model; empty for any other."""
    return model.frozen_state_keys() if isinstance(model, HasFrozenBackbone) else set()
