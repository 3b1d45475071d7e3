"""Cost of the token and region selectors of ViT methods, as data: FLOPs by formula and the measured
time of fgir's own selector functions on random inputs of the right shapes.

Selectors (the cost table of GLSim, arXiv 2407.12891, Table 1):

- `psm`: TransFG's part selection (arXiv 2103.07976, Section 3.2), the product of the softmax maps
  of `layers` blocks and a per-head argmax over the CLS row (`fgir.models.transfg.select_parts`).
- `maws`: FFVT's mutual attention weight selection (arXiv 2107.02341, Section 3.2) in each of
  `layers` blocks, top-12 per block (`fgir.models.ffvt.maws_scores`).
- `rollout`: attention rollout (arXiv 2005.00928, Section 3), RAMS-Trans's selector (arXiv
  2107.08192, Section 3.2), over `layers` blocks (`fgir.models.layers.attention_rollout`).
- `gls`: GLSim's global-local similarity (arXiv 2407.12891, Section 3.2), cosine of the CLS token with
  every patch and the top-8 patches (`fgir.models.gls.gls_scores`).

Counting convention: one FLOP per multiply, add, subtract, divide, exp, square root or comparison;
a matrix product costs 2 FLOPs per multiply-accumulate, as `torch.utils.flop_counter` counts it. A
max or argmax over n values is n - 1 comparisons; a top-k over n values is counted the same, n - 1,
a lower bound (the heap updates of k > 1 are not counted). A softmax over n values is 5n - 2: max,
subtract, exp, sum, divide. Selection only: the attention maps or tokens are taken as given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fgir.methods.capabilities import SelectsTokens
from fgir.models.ffvt import maws_scores
from fgir.models.gls import gls_score_flops, gls_scores
from fgir.models.layers.attention_rollout import attention_rollout
from fgir.models.layers.attention_rollout import rollout_flops as layer_rollout_flops
from fgir.models.layers.attention_rollout import rollout_matmul_flops as layer_rollout_matmul_flops
from fgir.models.transfg import select_parts
from fgir.tools.bench import median_ms

MAWS_TOKENS_PER_LAYER = 12  # FFVT's K
GLS_TOP_O = 8  # GLSim's top-O


def softmax_flops(length: int) -> int:
    """One softmax over `length` values: max (n - 1), subtract n, exp n, sum (n - 1), divide n."""
    return 5 * length - 2


def psm_matmul_flops(tokens: int, heads: int, layers: int) -> int:
    """The `layers - 1` products of (T, T) softmax maps, per head: 2 T^3 each."""
    return heads * (layers - 1) * 2 * tokens**3


def psm_flops(tokens: int, heads: int, layers: int, dim: int) -> int:
    """Products of the maps plus, per head, the argmax over the T - 1 patches of the CLS row."""
    return psm_matmul_flops(tokens, heads, layers) + heads * (tokens - 2)


def maws_flops(tokens: int, heads: int, layers: int, dim: int) -> int:
    """Per block: per head a softmax over the CLS column and one over the CLS row; each of the two
    averaged over the heads (H - 1 adds and a divide per token); their product; the top-K."""
    per_layer = heads * 2 * softmax_flops(tokens) + 2 * heads * tokens + tokens + (tokens - 1)
    return layers * per_layer


def rollout_matmul_flops(tokens: int, heads: int, layers: int) -> int:
    """The `layers - 1` products of the (T, T) head-averaged maps: 2 T^3 each."""
    return layer_rollout_matmul_flops(tokens, layers)


def rollout_flops(tokens: int, heads: int, layers: int, dim: int) -> int:
    """`fgir.models.layers.attention_rollout.rollout_flops` (the width does not enter)."""
    return layer_rollout_flops(tokens, heads, layers)


def gls_flops(tokens: int, heads: int, layers: int, dim: int) -> int:
    """Cosine scores of the T - 1 patches against the CLS token plus the top-O."""
    patches = tokens - 1
    return gls_score_flops(patches, dim, "cosine") + (patches - 1)


@dataclass(frozen=True)
class Selector:
    """A selector's FLOP formula, the layer count it reads in a ViT of `depth` blocks, and a call of
    fgir's implementation on random inputs (batch, tokens, heads, layers, dim, generator)."""

    name: str
    flops: Callable[[int, int, int, int], int]
    layers_read: Callable[[int], int]
    make_inputs: Callable[[int, int, int, int, int, torch.Generator], tuple]
    run: Callable[..., torch.Tensor]


def _softmax_maps(batch: int, tokens: int, heads: int, layers: int, dim: int,
                  generator: torch.Generator) -> tuple[list[torch.Tensor]]:
    return ([torch.randn(batch, heads, tokens, tokens, generator=generator).softmax(dim=-1)] * layers,)


def _scores(batch: int, tokens: int, heads: int, layers: int, dim: int,
            generator: torch.Generator) -> tuple[list[torch.Tensor]]:
    return ([torch.randn(batch, heads, tokens, tokens, generator=generator)] * layers,)


def _tokens(batch: int, tokens: int, heads: int, layers: int, dim: int,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch, dim, generator=generator), torch.randn(batch, tokens - 1, dim, generator=generator)


def _run_maws(scores: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([maws_scores(layer).topk(MAWS_TOKENS_PER_LAYER, dim=-1).indices for layer in scores])


def _run_gls(global_token: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    return gls_scores(global_token, patches, "cosine").topk(GLS_TOP_O, dim=1).indices


SELECTORS = {
    "psm": Selector("psm", psm_flops, lambda depth: depth - 1, _softmax_maps, select_parts),
    "rollout": Selector("rollout", rollout_flops, lambda depth: depth, _softmax_maps, attention_rollout),
    "maws": Selector("maws", maws_flops, lambda depth: depth - 1, _scores, _run_maws),
    "gls": Selector("gls", gls_flops, lambda depth: 1, _tokens, _run_gls),
}


def input_bytes(name: str, tokens: int, heads: int, dim: int, batch: int = 1) -> int:
    """Memory of the random float32 inputs `time_selector` makes: the tokens, or one map (B, H, T, T)
    that stands for every layer's."""
    if name == "gls":
        return 4 * batch * tokens * dim
    return 4 * batch * heads * tokens * tokens


@torch.inference_mode()
def time_selector(name: str, tokens: int, heads: int, layers: int, dim: int, batch: int = 1, warmup: int = 1,
                  iters: int = 3, seed: int = 0, device: torch.device | None = None) -> float:
    """Median milliseconds of one call of the selector on random inputs (softmax maps for psm and
    rollout, scores before the softmax for maws, tokens for gls), on `device` (the CPU by default).
    One random map is given for every layer: the selectors' work does not depend on the values, and
    memory stays that of one map."""
    selector = SELECTORS[name]
    device = device or torch.device("cpu")
    inputs = selector.make_inputs(batch, tokens, heads, layers, dim, torch.Generator().manual_seed(seed))
    inputs = tuple([x.to(device) for x in item] if isinstance(item, list) else item.to(device) for item in inputs)
    return median_ms(lambda: selector.run(*inputs), warmup, iters, device)


def selector_report(model: torch.nn.Module, warmup: int, iters: int, device: torch.device | None = None) -> dict | None:
    """What `fgir bench` reports of a model's selector: its FLOPs per image by formula and the median
    time of one call on random inputs of the model's shapes for one image; None without a selector."""
    if not isinstance(model, SelectsTokens):
        return None
    name, tokens, heads, layers, dim = model.selector_shape()
    return {
        "selector": name, "tokens": tokens, "heads": heads, "layers": layers, "dim": dim,
        "selector_gflops_per_image": SELECTORS[name].flops(tokens, heads, layers, dim) / 1e9,
        "selector_ms_per_image": time_selector(name, tokens, heads, layers, dim, 1, warmup, max(iters, 3),
                                               device=device),
    }
