"""Exponential moving average of the weights (`train.ema_decay`), with timm's ModelEmaV3 arithmetic.

After optimizer step n (counted from 1) every floating-point tensor becomes
`ema.lerp(w, 1 - d_n)`, i.e. `d_n * ema + (1 - d_n) * w`, and every integer buffer is copied, as
timm's train.py calls `ModelEmaV3.update(model, step=num_updates)`: d_1 = 0 (the first update
copies the weights), then d_n = `train.ema_decay`, or with `train.ema_warmup` timm's warm-up
min(decay, 1 - n^(-2/3)) (its inv_gamma 1, power 2/3).

Only the tensors a checkpoint stores are averaged: a frozen pretrained backbone never changes, so
its EMA would equal it; frozen-backbone methods keep an EMA of their trainable part alone. The EMA is
evaluated by copying it into the model for the pass and copying the raw weights back
(`WeightEma.applied`), so no second model is held.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from fgir.engine.checkpoint import CheckpointError, frozen_backbone_keys

WARMUP_GAMMA, WARMUP_POWER = 1.0, 2 / 3  # timm's ModelEmaV3 defaults


def ema_decay_at(step: int, decay: float, warmup: bool) -> float:
    """The decay of optimizer step `step` (1-based), as timm's ModelEmaV3.get_decay(step)."""
    step = max(0, step - 1)
    if step <= 0:
        return 0.0
    if not warmup:
        return decay
    return max(min(1 - (1 + step / WARMUP_GAMMA) ** -WARMUP_POWER, decay), 0.0)


class WeightEma:
    """The EMA of `net`'s stored tensors, started from its current weights."""

    def __init__(self, net: nn.Module, decay: float, warmup: bool) -> None:
        self.decay, self.warmup = decay, warmup
        frozen = frozen_backbone_keys(net)
        self.shadow = {key: value.detach().clone() for key, value in net.state_dict().items() if key not in frozen}

    @torch.no_grad()
    def update(self, net: nn.Module, step: int) -> None:
        weight = 1.0 - ema_decay_at(step, self.decay, self.warmup)
        state = net.state_dict()
        floats = [key for key, value in self.shadow.items() if value.is_floating_point()]
        torch._foreach_lerp_([self.shadow[k] for k in floats], [state[k].detach() for k in floats], weight)
        for key, value in self.shadow.items():
            if not value.is_floating_point():
                value.copy_(state[key])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor], source: str) -> None:
        if state.keys() != self.shadow.keys():
            missing, extra = sorted(self.shadow.keys() - state.keys()), sorted(state.keys() - self.shadow.keys())
            raise CheckpointError(f"{source}: its EMA weights do not fit the model (missing {missing[:3]}, "
                                  f"unexpected {extra[:3]}); train.ema_decay cannot be turned on when resuming")
        with torch.no_grad():
            for key, value in state.items():
                self.shadow[key].copy_(value)

    @contextmanager
    def applied(self, net: nn.Module) -> Iterator[None]:
        """`net` holds the EMA weights inside the block, its own (bit-identical) after it."""
        state = net.state_dict()
        raw = {key: state[key].detach().clone() for key in self.shadow}
        with torch.no_grad():
            for key, value in self.shadow.items():
                state[key].copy_(value)
        try:
            yield
        finally:
            with torch.no_grad():
                for key, value in raw.items():
                    state[key].copy_(value)
