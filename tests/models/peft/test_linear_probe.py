import copy

import pytest
import torch

from conftest import tiny_backbone
from fgir.config import model_config
from fgir.models.peft.freezing import FrozenBackboneConfig
from fgir.models.peft.linear_probe import build_linear


@pytest.mark.parametrize("train_cls_token", [True, False])
def test_linear_probe_is_the_head_on_the_frozen_pooled_token(train_cls_token):
    backbone = tiny_backbone(img_size=32, depth=2)
    plain = copy.deepcopy(backbone)
    config = model_config("linear", zero_init_head=False, peft=FrozenBackboneConfig(train_cls_token=train_cls_token))
    model = build_linear(backbone, 5, config).train()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias"} | (
        {"backbone.vit.cls_token"} if train_cls_token else set()
    )
    images = torch.randn(3, 3, 32, 32)
    expected = model.head(plain.pool(plain.forward_features(images)))
    torch.testing.assert_close(model(images), expected, rtol=0, atol=0)
    assert model.frozen_prefix() == (0 if train_cls_token else 2)
