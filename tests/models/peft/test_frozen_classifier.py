"""Every frozen-backbone method of this module family (ILA, ILA+, ILA++, ADPT, ConvPass, linear probe):
gradient census, the no-graph prefix, a few training steps."""

import copy
from functools import cache

import pytest
import torch
from torch.nn import functional as F

from conftest import fit_steps, tiny_backbone
from fgir.config import model_config
from fgir.methods import get_method
from fgir.models.peft.frozen_classifier import FrozenClassifier

FROZEN_METHODS = ["ila", "ila_plus", "ila_pp", "adapter", "convpass", "linear"]
ILA_METHODS = {"ila", "ila_plus", "ila_pp"}
ADAPTER_METHODS = {"ila_pp", "adapter", "convpass"}
DEPTH = 4
SIZE = 48  # patch 8: a 6x6 grid, 4x4 after the DS-ILA after block 0, 2x2 after the one after block 2


@cache
def _backbone():
    return tiny_backbone(img_size=SIZE, depth=DEPTH)


def build(method: str, zero_init_head: bool = False, **peft) -> FrozenClassifier:
    backbone = copy.deepcopy(_backbone())  # building a timm model costs more than the test
    spec = get_method(method)
    if method in ILA_METHODS:
        peft = {"ila_ds_layers": [0, 2], **peft}
    config = model_config(method, zero_init_head=zero_init_head, peft=spec.config(**peft))
    return spec.build(backbone, 3, config)


def randomize_trainable(model: torch.nn.Module) -> None:
    """Zero-initialised up-projections would leave the layers before them without gradients."""
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.3)


def batch(size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    return torch.randn(size, 3, SIZE, SIZE, generator=generator), torch.arange(size) % 3


def gradients(model: FrozenClassifier) -> dict[str, torch.Tensor]:
    images, labels = batch()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(3)  # the same dropout masks in every call
    F.cross_entropy(model(images), labels).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("train_cls_token", [True, False])
@pytest.mark.parametrize("method", FROZEN_METHODS)
def test_gradient_census(method, train_cls_token):
    model = build(method, train_cls_token=train_cls_token).train()
    randomize_trainable(model)
    grads = gradients(model)
    names = [name for name, _ in model.named_parameters()]
    expected = {name for name in names if name.startswith(("head.", "inter_layer.")) or "_adapter." in name}
    if train_cls_token:
        expected.add("backbone.vit.cls_token")
    assert {name for name, p in model.named_parameters() if p.requires_grad} == expected
    assert {name for name, grad in grads.items() if grad.abs().sum() > 0} == expected
    assert set(grads) == expected  # frozen parameters get no gradient at all
    assert any(name.startswith("inter_layer.") for name in expected) == (method in ILA_METHODS)
    assert any("_adapter." in name for name in expected) == (method in ADAPTER_METHODS)


@pytest.mark.parametrize("train_cls_token", [True, False])
@pytest.mark.parametrize("method", FROZEN_METHODS)
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


@pytest.mark.parametrize("method", FROZEN_METHODS)
def test_a_few_steps_lower_the_loss_and_reach_every_trainable_parameter(method):
    torch.manual_seed(0)
    model = build(method, zero_init_head=True).train()
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.SGD(trainable.values(), lr=0.05, momentum=0.9)
    images, labels = batch(6)
    losses = fit_steps(model, images, labels, 6, optimizer)
    assert losses[-1] < losses[0]
    # Zero-initialised up-projections and head: gradients reach the modules behind them step by step.
    assert [name for name, p in trainable.items() if not p.grad.abs().sum() > 0] == []


def test_inter_layer_modules_must_sit_after_existing_blocks():
    with pytest.raises(ValueError, match=r"after blocks \[4\]: outside 0..3"):
        FrozenClassifier(tiny_backbone(img_size=SIZE, depth=DEPTH), 3, inter_layer={4: torch.nn.Identity()})
