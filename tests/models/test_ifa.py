import dataclasses

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_backbone
from fgir.config import ConfigError, load_config
from fgir.methods import build_model
from fgir.models.ifa import IFAClassifier, IFAConfig, layer_exclusion

CLASSES = 5


def make(depth=3, zero_init_head=False, **ifa):
    return IFAClassifier(tiny_backbone(depth=depth), CLASSES, IFAConfig(**ifa), zero_init_head=zero_init_head)


def test_shapes_and_the_head_matches_a_direct_computation():
    model = make().eval()
    images = torch.randn(4, 3, 32, 32)
    layer_cls = model.layer_cls(images)
    assert layer_cls.shape == (4, 32, 3)  # (B, D, L)
    # Layer i's CLS is what block i outputs, computed here block by block.
    tokens = model.backbone.embed(images)
    for i, block in enumerate(model.backbone.blocks):
        tokens = block(tokens)
        torch.testing.assert_close(layer_cls[..., i], tokens[:, 0])
    weights, bias = model.layer_weights.weight[0], model.layer_weights.bias[0]
    aggregate = torch.relu(sum(weights[i] * layer_cls[..., i] for i in range(3)) + bias)
    expected = model.head(F.layer_norm(aggregate, (32,), model.norm.weight, model.norm.bias, eps=1e-6))
    logits = model(images)
    assert logits.shape == (4, CLASSES)
    torch.testing.assert_close(logits, expected)


def test_gradient_census_every_layer_contributes():
    model = make(depth=3).train()
    model(torch.randn(4, 3, 32, 32)).logsumexp(dim=1).sum().backward()
    assert model.layer_weights.weight.grad.shape == (1, 3)
    assert (model.layer_weights.weight.grad != 0).all()  # each layer's CLS reaches the loss
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == trainable
    # Only the per-block CLS tokens are read: the backbone's final norm is unused, hence frozen.
    assert {name for name, _ in model.named_parameters()} - trainable == {"backbone.vit.norm.weight", "backbone.vit.norm.bias"}


def test_exclusion_loss_equals_sum_of_kl_divergences():
    torch.manual_seed(0)
    layer_cls = torch.randn(6, 32, 5)
    for temperature, distance in ((1.0, 2), (3.0, 1), (0.5, 4)):
        # F.kl_div(log Q, P, 'batchmean') = KL(P || Q) averaged over the batch.
        expected = sum(
            F.kl_div(F.log_softmax(layer_cls[..., i + distance] / temperature, dim=1),
                     F.softmax(layer_cls[..., i] / temperature, dim=1), reduction="batchmean")
            for i in range(5 - distance)
        )
        torch.testing.assert_close(layer_exclusion(layer_cls, temperature, distance), expected)
    assert layer_exclusion(torch.ones(2, 8, 3), 1.0, 2) == 0  # identical layers: nothing to reward


def test_extra_loss_is_the_weighted_exclusion_subtracted_in_training_only():
    model = make(depth=4, exclusion_loss=True, exclusion_weight=0.01, temperature=2.0, exclusion_distance=2)
    images = torch.randn(3, 3, 32, 32)
    model.train()
    model(images)
    expected = -0.01 * 2.0**2 * layer_exclusion(model.layer_cls(images), 2.0, 2)
    torch.testing.assert_close(model.extra_loss(None, None), expected)
    assert model.extra_loss(None, None) < 0
    model.eval()
    model(images)
    assert model.extra_loss(None, None) is None
    plain = make(exclusion_loss=False).train()
    plain(images)
    assert plain.extra_loss(None, None) is None


def test_training_steps_lower_the_loss():
    torch.manual_seed(0)
    model = make(depth=3, exclusion_loss=True).train()
    images, labels = torch.randn(8, 3, 32, 32), torch.arange(8) % CLASSES
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def loss() -> torch.Tensor:
        return F.cross_entropy(model(images), labels) + model.extra_loss(None, None)

    first = loss()
    for _ in range(10):
        optimizer.zero_grad()
        value = loss()
        value.backward()
        optimizer.step()
    assert loss() < first


def test_built_by_name_from_a_config():
    config = load_config(None, ["model.method=vit_ifa", "model.backbone=vit_tiny_patch16_224", "model.pretrained=false",
                                "model.backbone_args={patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}",
                                "model.ifa.exclusion_loss=true", "model.ifa.exclusion_distance=1"])
    model = build_model(config.model, num_classes=CLASSES, image_size=32)
    assert isinstance(model, IFAClassifier) and model.layer_weights.in_features == 2
    assert model.head.weight.abs().sum() == 0  # zero-initialised head, as for the plain ViT
    with pytest.raises(ConfigError, match="model.ifa.exclusion_distance=2 leaves no pair of layers among the 2 blocks"):
        build_model(dataclasses.replace(config.model, ifa=IFAConfig(exclusion_loss=True)), CLASSES, 32)
    with pytest.raises(ConfigError, match="config key 'model.ifa.temperature' must be > 0, got 0.0"):
        load_config(None, ["model.method=vit_ifa", "model.ifa.temperature=0"])


def test_a_backbone_without_cls_token_is_refused():
    with pytest.raises(ConfigError, match="method vit_ifa aggregates every layer's CLS token, but .* has none"):
        IFAClassifier(tiny_backbone(class_token=False, global_pool="avg"), CLASSES, IFAConfig())
