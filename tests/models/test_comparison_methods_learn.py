"""Each comparison method, frozen and full where it has both, learns tinted images: a few optimizer
steps of its trainable parameters lower the training loss (its extra loss included) and classify
images they never saw above chance; bfloat16 autocast keeps its logits finite."""

import pytest
import torch
import torch.nn.functional as F

from conftest import tinted_batch, tiny_backbone
from fgir.config import model_config
from fgir.methods import get_method

SETTINGS = [
    ("mpncov", {"reduction": 8, "frozen": True}), ("mpncov", {"reduction": 8, "frozen": False}),
    ("vqt", {"query_tokens": 2}),
    ("transfg", {"frozen": True}), ("transfg", {"frozen": False, "overlap_stride": 6}),
    ("ffvt", {"frozen": True, "tokens_per_layer": 4}), ("ffvt", {"frozen": False, "tokens_per_layer": 4}),
    ("ramstrans", {"frozen": True, "top_k": 4}), ("ramstrans", {"frozen": False, "top_k": 4}),
    ("simtrans", {"frozen": True, "head_width": 16}), ("simtrans", {"frozen": False, "head_width": 16, "contrastive_weight": 1.0}),
    # CAL with logit scale 1: at its 100 these steps (lr 0.05) overshoot on six images.
    ("cal", {"attention_maps": 4, "logit_scale": 1, "frozen": True}),
    ("cal", {"attention_maps": 4, "logit_scale": 1, "frozen": False}),
]


def build(method: str, section: dict) -> torch.nn.Module:
    spec = get_method(method)
    config = model_config(method, zero_init_head=False, **{spec.section: spec.config(**section)})
    return spec.build(tiny_backbone(depth=3), 3, config)


def training_loss(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    value = F.cross_entropy(model(images), labels)
    extra = model.extra_loss(None, labels) if hasattr(model, "extra_loss") else None
    return value if extra is None else value + extra


def train_steps(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int) -> None:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    for _ in range(steps):
        optimizer.zero_grad()
        training_loss(model, images, labels).backward()
        optimizer.step()


@pytest.mark.parametrize(("method", "section"), SETTINGS, ids=[f"{m}-{s}" for m, s in SETTINGS])
def test_a_few_steps_lower_the_training_loss(method, section):
    torch.manual_seed(0)
    model = build(method, section).train()
    images, labels = tinted_batch()
    first = training_loss(model, images, labels).item()
    train_steps(model, images, labels, 8)
    assert training_loss(model, images, labels).item() < first


@pytest.mark.parametrize("method", list(dict(SETTINGS)))
def test_bfloat16_autocast_gives_finite_logits_close_to_float32(method):
    model = build(method, dict(SETTINGS)[method]).eval()  # the last (full) setting of each
    images, _ = tinted_batch()
    exact = model(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = model(images)
    assert torch.isfinite(half).all()
    torch.testing.assert_close(half.float(), exact, rtol=0.1, atol=0.1)


@pytest.mark.parametrize(("method", "section"), SETTINGS, ids=[f"{m}-{s}" for m, s in SETTINGS])
def test_a_short_run_classifies_new_tinted_images_above_chance(method, section):
    torch.manual_seed(0)
    model = build(method, section).train()
    train_steps(model, *tinted_batch(size=24), 15)
    test_images, test_labels = tinted_batch(size=30)  # fresh noise: images the steps never saw
    with torch.no_grad():
        accuracy = (model.eval()(test_images).argmax(1) == test_labels).float().mean().item()
    assert accuracy > 0.6  # chance: 1/3
