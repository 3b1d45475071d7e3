"""The selector FLOP formulas against counts: FlopCounterMode for the matrix products of fgir's own
selectors, and for the element-wise parts an explicit count of the ops of a spelled-out reference
that gives the same result as fgir's selector."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from fgir.config import ModelConfig
from fgir.methods import build_model
from fgir.models.ffvt import maws_scores
from fgir.models.layers.attention_rollout import attention_rollout
from fgir.models.transfg import select_parts
from fgir.tools import selector_cost
from fgir.tools.bench import count_flops

aten = torch.ops.aten
TOKENS, HEADS, LAYERS, DIM = 7, 3, 4, 5
REDUCTIONS = (aten.sum, aten.amax, aten.argmax, aten.topk)


class ElementOps(TorchDispatchMode):
    """Counts one op per floating-point output value of a pointwise aten op, n - 1 per output of a
    sum, max or argmax over n values, and n - 1 per row of a top-k over n (the module's convention).
    Matrix products are left to FlopCounterMode."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in REDUCTIONS:
            source = args[0]
            rows = source.numel() // source.shape[-1] if func.overloadpacket is aten.topk else out.numel()
            self.count += source.numel() - rows
        elif torch.Tag.pointwise in func.tags and out.is_floating_point():
            self.count += out.numel()
        return out


def count_ops(run, *args):
    with ElementOps() as counter:
        result = run(*args)
    return counter.count, result


def matmul_flops(run, *args) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        run(*args)
    return counter.get_total_flops()


def explicit_softmax(x: torch.Tensor) -> torch.Tensor:
    shifted = (x - x.amax(dim=-1, keepdim=True)).exp()
    return shifted / shifted.sum(dim=-1, keepdim=True)


def explicit_head_mean(x: torch.Tensor) -> torch.Tensor:
    return x.sum(dim=1) / x.shape[1]


def random_maps(layers=LAYERS, softmax=True):
    torch.manual_seed(0)
    maps = [torch.randn(1, HEADS, TOKENS, TOKENS) for _ in range(layers)]
    return [m.softmax(dim=-1) for m in maps] if softmax else maps


def test_softmax_count():
    x = torch.randn(4, TOKENS)
    ops, result = count_ops(explicit_softmax, x)
    assert torch.allclose(result, x.softmax(dim=-1))
    assert ops == 4 * selector_cost.softmax_flops(TOKENS)


def test_psm_products_and_argmax():
    maps = random_maps()
    assert matmul_flops(select_parts, maps) == selector_cost.psm_matmul_flops(TOKENS, HEADS, LAYERS)
    ops, _ = count_ops(select_parts, maps)  # the argmax; the products are not element-wise ops
    assert ops == selector_cost.psm_flops(TOKENS, HEADS, LAYERS, DIM) - selector_cost.psm_matmul_flops(
        TOKENS, HEADS, LAYERS)


def test_maws_element_ops():
    scores = random_maps(softmax=False)

    def explicit_maws(layers):
        weights = [explicit_head_mean(explicit_softmax(layer[..., 0])) * explicit_head_mean(explicit_softmax(
            layer[:, :, 0])) for layer in layers]
        return weights, [w.topk(selector_cost.MAWS_TOKENS_PER_LAYER, dim=-1).indices for w in weights]

    with pytest.MonkeyPatch.context() as patch:  # K <= T for the tiny maps
        patch.setattr(selector_cost, "MAWS_TOKENS_PER_LAYER", 2)
        ops, (weights, _) = count_ops(explicit_maws, scores)
        assert matmul_flops(selector_cost.SELECTORS["maws"].run, scores) == 0
    assert all(torch.allclose(w, maws_scores(layer)) for w, layer in zip(weights, scores, strict=True))
    assert ops == selector_cost.maws_flops(TOKENS, HEADS, LAYERS, DIM)


def test_rollout_products_and_normalisation():
    maps = random_maps()
    assert matmul_flops(attention_rollout, maps) == selector_cost.rollout_matmul_flops(TOKENS, HEADS, LAYERS)

    def explicit_normalisation(layers):
        mixed = [explicit_head_mean(layer) + torch.eye(TOKENS) for layer in layers]
        return [m / m.sum(dim=-1, keepdim=True) for m in mixed]

    ops, normalised = count_ops(explicit_normalisation, maps)
    rolled = normalised[0]
    for layer in normalised[1:]:
        rolled = layer @ rolled
    assert torch.allclose(rolled, attention_rollout(maps), atol=1e-6)
    assert ops == selector_cost.rollout_flops(TOKENS, HEADS, LAYERS, DIM) - selector_cost.rollout_matmul_flops(
        TOKENS, HEADS, LAYERS)


def test_gls_element_ops():
    torch.manual_seed(0)
    global_token, patches = torch.randn(1, DIM), torch.randn(1, TOKENS - 1, DIM)

    def explicit_gls(g, p):
        dot = (g.unsqueeze(1) * p).sum(-1)
        cosine = dot / ((p * p).sum(-1).sqrt() * (g * g).sum(-1).sqrt())
        return cosine, cosine.topk(3, dim=1).indices

    ops, (cosine, _) = count_ops(explicit_gls, global_token, patches)
    assert torch.allclose(cosine, F.cosine_similarity(global_token.unsqueeze(1), patches, dim=-1))
    assert ops == selector_cost.gls_flops(TOKENS, HEADS, 1, DIM)


def test_timing_runs_every_selector_on_inputs_of_its_shapes():
    for name, selector in selector_cost.SELECTORS.items():
        tokens = 20  # enough tokens for the top-12 of MAWS
        ms = selector_cost.time_selector(name, tokens, HEADS, selector.layers_read(4), 16, batch=2, warmup=0, iters=1)
        assert math.isfinite(ms) and ms > 0, name
    assert selector_cost.input_bytes("psm", 10, 2, 16, batch=2) == 4 * 2 * 2 * 10 * 10


def test_paper_cost_table_counts_at_224():
    # GLSim's Table 1 (arXiv 2407.12891) counts each multiply and add once; its PSM runs TransFG's
    # 325 tokens (stride-12 overlapping patches), 12 heads, 11 maps: 8.2e3 MFLOPs; rollout 197
    # tokens, 12 maps: 1.7e2 MFLOPs, printed to two figures. Our products count 2 T^3 where the paper
    # counts T^2 (2T - 1); one map more or less would be 9% off.
    assert selector_cost.psm_flops(325, 12, 11, 768) / 1e6 == pytest.approx(8.2e3, rel=0.01)
    assert selector_cost.rollout_flops(197, 12, 12, 768) / 1e6 == pytest.approx(1.7e2, rel=0.04)


def test_vit_b16_at_224_is_17_58_gmacs():
    # The papers' "FLOPs" are multiply-accumulates: ViT-B/16 at 224 is 17.58 GMACs (35.13 GFLOPs).
    # Built on the meta device: shapes only, no weights, no download.
    with torch.device("meta"):
        model = build_model(ModelConfig(method="vit", backbone="vit_base_patch16_224", pretrained=False), 1000, 224,
                            pretrained=False)
    gmacs = count_flops(model, 224, torch.device("meta")) / 2 / 1e9
    assert gmacs == pytest.approx(17.58, rel=0.005)
