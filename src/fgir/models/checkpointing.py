"""Gradient checkpointing for methods that run the backbone's blocks in loops of their own: they
honour `train.grad_checkpointing` (the backbone's switch) as `Backbone.run_blocks` does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from timm.models import checkpoint

from fgir.models.backbone import Backbone


def run_block(backbone: Backbone, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`function(*args, **kwargs)`, recomputed in the backward pass when the backbone checkpoints."""
    if backbone.vit.grad_checkpointing:
        return checkpoint(function, *args, **kwargs)
    return function(*args, **kwargs)
