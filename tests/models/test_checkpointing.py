"""VQT, TransFG and FFVT run the backbone's blocks themselves: with gradient checkpointing on, each
of those blocks is recomputed in the backward pass and the gradients do not change."""

import pytest
import torch

import fgir.models.checkpointing as checkpointing
from conftest import tiny_backbone
from fgir.models.ffvt import FFVT, FFVTConfig
from fgir.models.transfg import TransFG, TransFGConfig
from fgir.models.vqt import QueryTunedViT, VQTConfig

BUILDS = {
    "vqt": lambda: QueryTunedViT(tiny_backbone(depth=3), 3, VQTConfig(query_tokens=2), zero_init_head=False),
    "transfg": lambda: TransFG(tiny_backbone(depth=3), 3, TransFGConfig(), zero_init_head=False),
    "ffvt": lambda: FFVT(tiny_backbone(depth=3), 3, FFVTConfig(tokens_per_layer=4), zero_init_head=False),
}


def gradients(model: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model(images).logsumexp(dim=1).sum().backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("method", BUILDS)
def test_checkpointed_blocks_give_the_same_gradients(method, monkeypatch):
    model = BUILDS[method]().eval()  # eval: no dropout, so both passes draw nothing at random
    images = torch.randn(2, 3, 32, 32)
    plain = gradients(model, images)
    calls = []
    monkeypatch.setattr(checkpointing, "checkpoint", lambda fn, *a, **k: calls.append(fn) or fn(*a, **k))
    model.backbone.set_grad_checkpointing(True)
    gradients(model, images)
    assert len(calls) == (3 if method == "vqt" else 2)  # every block the method runs, the unused last one not
    monkeypatch.undo()
    checked = gradients(model, images)
    assert plain.keys() == checked.keys()
    for name in plain:
        torch.testing.assert_close(checked[name], plain[name], msg=name)
