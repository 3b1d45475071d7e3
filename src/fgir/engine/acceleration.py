"""Compute fast paths a run switches on in its config: torch.compile with an eager fallback,
channels-last memory order, and activation checkpointing. (Fused attention is timm's default
everywhere; only the explanation tools switch it off to read attention maps. Mixed precision is
`train.precision`.)"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

# Dynamo keeps at most `recompile_limit` graphs per code object, and every model compiled here enters
# through the same wrapper frame, so all models of one process would share one allowance: after a few
# models of different architectures (a notebook, a test run) the rest would run eagerly.
GRAPHS_PER_MODEL = 8
# ...but never more than this in all: a process that compiles models without end (a long notebook)
# would otherwise let one code object hold an unbounded number of graphs and guards.
MAX_RECOMPILE_LIMIT = 256


def compile_model(model: nn.Module, backend: str = "inductor", *, frozen_weights: bool = False) -> nn.Module:
    """Compile `model` in place: its class, attributes and state_dict keys stay as they are (so
    checkpoints are unchanged). The first call that fails to compile - in any mode, training or
    evaluation - warns once with the compiler's error and the model runs eagerly from then on.

    `frozen_weights` is for inference-only work (eval, predict, bench): inductor then folds the
    weights into the graphs it compiles under no_grad/inference_mode (its `freezing` option:
    pre-packed matmul weights, bias fused into the matmul, one static graph per batch shape). Those
    graphs keep the weights of the moment they were compiled, so never use it on a model that
    trains afterwards.
    """
    limit = torch._dynamo.config.recompile_limit
    torch._dynamo.config.recompile_limit = max(limit, min(limit + GRAPHS_PER_MODEL, MAX_RECOMPILE_LIMIT))
    if frozen_weights:
        compiled = _with_inductor_freezing(torch.compile(model._call_impl, backend=backend, dynamic=False))
    else:
        compiled = torch.compile(model._call_impl, backend=backend)
    model._compiled_call_impl = _EagerFallback(model, compiled)
    return model


def use_channels_last(model: nn.Module) -> nn.Module:
    """Put `model`'s 4-d weights in channels-last (NHWC) order, in place, and convert every image batch
    it is called with the same way (a forward pre-hook), so convolutions run oneDNN's/cuDNN's NHWC
    kernels without a layout change per layer. State_dict keys and values are unchanged; the hook
    is not saved with the model."""
    model.to(memory_format=torch.channels_last)
    model.register_forward_pre_hook(_images_to_channels_last)
    return model


def _images_to_channels_last(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    images, *rest = args
    return (images.contiguous(memory_format=torch.channels_last), *rest)


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


def _with_inductor_freezing(compiled: Callable[..., Any]) -> Callable[..., Any]:
    # Inductor reads `freezing` from its global config when it compiles a graph (on a call), and
    # torch.compile(options={"freezing": True}) does not reach that check (torch 2.14: the graphs
    # kept plain addmm), so the setting is patched in around each call, for this model only.
    def call(*args: Any, **kwargs: Any) -> Any:
        with torch._inductor.config.patch(freezing=True):
            return compiled(*args, **kwargs)

    return call


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
