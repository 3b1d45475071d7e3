"""Optimizers and the per-step learning-rate schedule of the papers' recipes."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from fgir.config import Config, ConfigError, TrainConfig


def with_batch_scaled_lr(config: Config) -> tuple[Config, str | None]:
    """The linear scaling rule, when `train.lr_base_batch` is set: train.lr was tuned for that global
    batch, so data.batch_size B gets lr x B / lr_base_batch (warmup_lr and min_lr unchanged). The
    result says lr_base_batch=B, so applying it again (a saved run config) changes nothing. Returns
    the config and a line saying what changed, or None."""
    train, batch = config.train, config.data.batch_size
    if train.lr_base_batch is None or train.lr_base_batch == batch:
        return config, None
    lr = train.lr * batch / train.lr_base_batch
    note = (f"train.lr {train.lr:g} tuned for batch {train.lr_base_batch} (train.lr_base_batch) -> {lr:g} for "
            f"data.batch_size={batch}")
    return dataclasses.replace(config, train=dataclasses.replace(train, lr=lr, lr_base_batch=batch)), note


def build_optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW over the parameters that require gradients. Biases and norm/1-D
    parameters (and tokens, position embeddings) get no weight decay, as usual for ViTs. With
    `train.layer_decay`, each parameter's lr is scaled by layer_decay ** (depth of the layers above it),
    as timm's `param_groups_layer_decay` assigns them (BEiT's layer-wise lr decay)."""
    scales = layer_lr_scales(model, train.layer_decay) if train.layer_decay is not None else {}
    # Full-lr groups first, decayed before not, both always present: the layout checkpoints store.
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {(1.0, True): [], (1.0, False): []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decays = not (param.ndim <= 1 or name.endswith(("cls_token", "pos_embed", "reg_token")))
        groups.setdefault((scales.get(name, 1.0), decays), []).append(param)
    param_groups = [{"params": params, "lr": train.lr * scale, "lr_scale": scale,
                     "weight_decay": train.weight_decay if decays else 0.0}
                    for (scale, decays), params in sorted(groups.items(), key=lambda item: (-item[0][0], not item[0][1]))
                    if params or scale == 1.0]
    if train.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=train.lr, momentum=train.momentum,
                               nesterov=train.nesterov and train.momentum > 0)
    return torch.optim.AdamW(param_groups, lr=train.lr)


def layer_lr_scales(model: nn.Module, layer_decay: float) -> dict[str, float]:
    """{parameter name: lr scale} for the timm ViT inside `model`: stem (patch embedding, tokens) the
    deepest decay, block i one step less, everything after the last block (final norm, heads, a
    method's own modules) 1, with timm's own grouping of the ViT's parameters."""
    from timm.models import VisionTransformer, group_parameters

    found = next(((name, module) for name, module in model.named_modules() if isinstance(module, VisionTransformer)),
                 None)
    if found is None:
        raise ConfigError("train.layer_decay needs a timm ViT in the model (for a CNN leave it null)")
    name, vit = found
    layers = group_parameters(vit, vit.group_matcher(coarse=False), reverse=True)
    layer_max = max(layers.values())
    prefix = f"{name}." if name else ""
    return {prefix + key: layer_decay ** (layer_max - layer) for key, layer in layers.items()}


def lr_at(step: int, total_steps: int, train: TrainConfig) -> float:
    """The learning rate optimizer step `step` (0-based) runs at, under `train.schedule`."""
    if train.schedule == "reference":
        return reference_lr(max(step - 1, 0), total_steps, train)
    return standard_lr(step, total_steps, train)


def standard_lr(step: int, total_steps: int, train: TrainConfig) -> float:
    """Linear warm-up from warmup_lr to lr over warmup_steps, then cosine decay to min_lr over the
    steps after the warm-up."""
    if step < train.warmup_steps:
        return train.warmup_lr + (train.lr - train.warmup_lr) * step / train.warmup_steps
    decay_steps = max(1, total_steps - train.warmup_steps)
    progress = min(1.0, (step - train.warmup_steps) / decay_steps)
    return train.min_lr + 0.5 * (train.lr - train.min_lr) * (1 + math.cos(math.pi * progress))


def reference_lr(t: int, total_steps: int, train: TrainConfig) -> float:
    """The GLSim and ILA reference trainers' schedule (arXiv:2407.12891, 2409.11051): timm's
    CosineLRScheduler(t_initial=total_steps, warmup_t=warmup_steps, warmup_prefix=False) at update `t`,
    whose cosine counts from step 0, warm-up included, so its peak lies slightly below lr. Their loop
    updates the schedule with the number of the step just taken, so step i runs at t = i - 1 (see
    `lr_at`)."""
    if t < train.warmup_steps:
        return train.warmup_lr + t * ((train.lr - train.warmup_lr) / train.warmup_steps)
    if t >= total_steps:
        return train.min_lr
    return train.min_lr + 0.5 * (train.lr - train.min_lr) * (1 + math.cos(math.pi * t / total_steps))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, train: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, total_steps, train) / train.lr)
