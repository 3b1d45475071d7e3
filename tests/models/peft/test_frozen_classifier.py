"""The classifier shared by frozen-backbone methods: the blocks before its first trainable module run
without a graph and give the same gradients. (Gradient census and training steps of every method:
tests/methods/test_contracts.py.)"""

import copy
from functools import cache

import pytest
import torch
from torch.nn import functional as F

from conftest import all_methods, tiny_backbone
from fgir.config import model_config
from fgir.methods import get_method
from fgir.models.peft.frozen_classifier import FrozenClassifier

DEPTH = 4
SIZE = 48  # patch 8: a 6x6 grid, 4x4 after the DS-ILA after block 0, 2x2 after the one after block 2


@cache
def _backbone():
    return tiny_backbone(img_size=SIZE, depth=DEPTH)


def build(method: str, **peft) -> FrozenClassifier:
    backbone = copy.deepcopy(_backbone())  # building a timm model costs more than the test
    spec = get_method(method)
    if spec.config is not None and "ila_ds_layers" in spec.config.__dataclass_fields__:
        peft = {"ila_ds_layers": [0, 2], **peft}
    sections = {spec.section: spec.config(**peft)} if spec.section else {}
    return spec.build(backbone, 3, model_config(method, zero_init_head=False, **sections))


@cache
def frozen_classifier_methods() -> list[str]:
    """The methods built around a ViT backbone whose model is a FrozenClassifier."""
    return [method for method in all_methods() if not get_method(method).own_network
            and isinstance(build(method), FrozenClassifier)]


def randomize_trainable(model: torch.nn.Module) -> None:
    """Zero-initialised up-projections would leave the layers before them without gradients."""
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.3)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    return torch.randn(4, 3, SIZE, SIZE, generator=generator), torch.arange(4) % 3


def gradients(model: FrozenClassifier) -> dict[str, torch.Tensor]:
    images, labels = batch()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(3)  # the same dropout masks in every call
    F.cross_entropy(model(images), labels).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("train_cls_token", [True, False])
@pytest.mark.parametrize("method", frozen_classifier_methods())
def test_the_no_graph_prefix_gives_the_same_gradients(method, train_cls_token):
    model = build(method, train_cls_token=train_cls_token).train()
    randomize_trainable(model)
    optimised = gradients(model)
    model.no_grad_frozen_prefix = False
    plain = gradients(model)
    assert optimised.keys() == plain.keys()
    for name, grad in plain.items():
        torch.testing.assert_close(optimised[name], grad, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize(
    ("method", "peft", "prefix"),
    [
        ("ila", {"train_cls_token": False}, 1),  # the first DS-ILA is after block 0
        ("ila", {"train_cls_token": True}, 0),  # the CLS token enters block 0
        ("ila", {"train_cls_token": False, "train_pos_embed": True}, 0),
        (
            "ila_plus",
            {"train_cls_token": False, "ila_ds_layers": [2]},
            1,
        ),  # same-resolution ILA after block 0
        ("ila", {"train_cls_token": False, "ila_ds_layers": [2]}, 3),
        ("ila_pp", {"train_cls_token": False}, 0),  # adapters in block 0
        ("linear", {"train_cls_token": False}, DEPTH),
        ("linear", {"train_cls_token": False, "train_norm": True}, DEPTH),
    ],
)
def test_frozen_prefix_stops_at_the_first_trainable_module(method, peft, prefix):
    model = build(method, **peft).train()
    assert model.frozen_prefix() == prefix
    recorded = []
    for block in model.backbone.blocks:
        block.register_forward_pre_hook(lambda module, args: recorded.append(torch.is_grad_enabled()))
    images, _ = batch()
    model(images)
    assert recorded == [index >= prefix for index in range(DEPTH)]


def test_inter_layer_modules_must_sit_after_existing_blocks():
    with pytest.raises(ValueError, match=r"after blocks \[4\]: outside 0..3"):
        FrozenClassifier(tiny_backbone(img_size=SIZE, depth=DEPTH), 3, inter_layer={4: torch.nn.Identity()})
