"""Compute fast paths a run switches on in its config: torch.compile with an eager fallback, and
activation checkpointing. (Fused attention is timm's default everywhere; only the explanation
tools switch it off to read attention maps. Mixed precision is `train.precision`.)"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


def compile_model(model: nn.Module, backend: str = "inductor") -> nn.Module:
    """Compile `model` in place: its class, attributes and state_dict keys stay as they are (so
    checkpoints are unchanged). The first call that fails to compile - in any mode, training or
    evaluation - warns once with the compiler's error and the model runs eagerly from then on."""
    compiled = torch.compile(model._call_impl, backend=backend)
    model._compiled_call_impl = _EagerFallback(model, compiled)
    return model


def set_grad_checkpointing(model: nn.Module, enable: bool = True) -> int:
    """Recompute block activations in the backward pass (memory for time) in every backbone of
    `model` that supports it (the outermost module offering `set_grad_checkpointing`: a Backbone,
    not also the timm model inside it); returns how many were switched."""
    switched: list[nn.Module] = []
    for module in model.modules():
        inside_switched = any(module in outer.modules() for outer in switched)
        if hasattr(module, "set_grad_checkpointing") and not inside_switched:
            module.set_grad_checkpointing(enable)
            switched.append(module)
    return len(switched)


class _EagerFallback:
    def __init__(self, model: nn.Module, compiled: Callable[..., Any]):
        self.model = model
        self.compiled = compiled

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.compiled(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - any compiler failure; a model error re-raises eagerly
            # Dynamo wraps the compiler's own exception; that one says what went wrong.
            cause = getattr(error, "inner_exception", None) or error.__cause__ or error
            first_line = next(iter(str(cause).splitlines()), "")
            message = (f"torch.compile failed ({type(cause).__name__}: {first_line}); "
                       f"{type(self.model).__name__} runs eagerly from now on")
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            log.warning(message)
            self.model._compiled_call_impl = None
            return self.model._call_impl(*args, **kwargs)
