"""Nested training state (optimizer, scheduler, scaler, RNG) <-> safetensors tensors + JSON.

Training state is a tree of dicts, lists, tuples, tensors and plain scalars. Tensors go into the
safetensors file under a path-like key; everything else goes into a JSON skeleton that points at
them. Loading therefore never unpickles anything.
"""

from __future__ import annotations

from typing import Any

import torch

TENSOR = "__tensor__"
TUPLE = "__tuple__"
KEYED = "__keyed__"  # a dict whose keys are not all strings (optimizer state uses int keys)


def flatten(tree: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Return the JSON skeleton of `tree`; tensors are moved into `tensors` under `prefix/...`."""
    if isinstance(tree, torch.Tensor):
        key = prefix
        tensors[key] = tree.detach().cpu().contiguous()
        return {TENSOR: key}
    if isinstance(tree, dict):
        if all(isinstance(k, str) for k in tree):
            return {k: flatten(v, f"{prefix}/{k}", tensors) for k, v in tree.items()}
        return {KEYED: [[k, flatten(v, f"{prefix}/{k}", tensors)] for k, v in tree.items()]}
    if isinstance(tree, tuple):
        return {TUPLE: [flatten(v, f"{prefix}/{i}", tensors) for i, v in enumerate(tree)]}
    if isinstance(tree, list):
        return [flatten(v, f"{prefix}/{i}", tensors) for i, v in enumerate(tree)]
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    raise TypeError(f"cannot store training state at '{prefix}': unsupported type {type(tree).__name__}")


def unflatten(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if TENSOR in skeleton:
            return tensors[skeleton[TENSOR]]
        if TUPLE in skeleton:
            return tuple(unflatten(v, tensors) for v in skeleton[TUPLE])
        if KEYED in skeleton:
            return {k: unflatten(v, tensors) for k, v in skeleton[KEYED]}
        return {k: unflatten(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [unflatten(v, tensors) for v in skeleton]
    return skeleton
