"""Attention rollout (Abnar & Zuidema, ACL 2020, arXiv 2005.00928, Section 3), the region selector
of RAMS-Trans (Hu et al., ACM MM 2021, arXiv 2107.08192, Section 3.2): the heads' softmax maps of
each block are averaged, the identity is added for the residual path and the rows renormalised,
and the blocks' matrices are multiplied from the first to the last."""

import torch


def attention_rollout(probabilities: list[torch.Tensor]) -> torch.Tensor:
    """Softmax attention maps (B, H, S, S) of blocks 0..L-1 -> the rolled-out map (B, S, S)."""
    return rollout_of_mixed([layer.mean(dim=1) for layer in probabilities])


def rollout_of_mixed(mixed: list[torch.Tensor]) -> torch.Tensor:
    """Head-averaged maps (B, S, S) of blocks 0..L-1 -> the rolled-out map (B, S, S)."""
    rolled = None
    for layer in mixed:
        layer = layer + torch.eye(layer.shape[-1], dtype=layer.dtype, device=layer.device)
        layer = layer / layer.sum(dim=-1, keepdim=True)
        rolled = layer if rolled is None else layer @ rolled
    if rolled is None:
        raise ValueError("attention rollout needs the maps of at least one block")
    return rolled
