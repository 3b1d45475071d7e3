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


def rollout_matmul_flops(tokens: int, layers: int) -> int:
    """The `layers - 1` products of the (T, T) head-averaged maps: 2 T^3 each (a multiply and an
    add per term, as torch.utils.flop_counter counts them)."""
    return (layers - 1) * 2 * tokens**3


def rollout_flops(tokens: int, heads: int, layers: int) -> int:
    """FLOPs of one image's rollout, counted by hand. Per block: mean over the heads (H per entry),
    add the identity and divide by the row sums (T^2 adds, T (T - 1) for the sums, T^2 divides);
    then the products."""
    per_layer = heads * tokens**2 + tokens**2 + tokens * (tokens - 1) + tokens**2
    return layers * per_layer + rollout_matmul_flops(tokens, layers)
