import torch
from torch import nn

from fgir.models.backbone import Backbone
from fgir.models.heads import LinearHead
from fgir.models.peft.freezing import (
    FrozenBackboneConfig,
    FrozenBackboneModel,
    freeze_backbone,
)
from fgir.models.trainable import trainable_report


class _Probe(FrozenBackboneModel):
    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone
        self.adapter = nn.Sequential(nn.Linear(backbone.embed_dim, 4), nn.Dropout(0.5))
        # A trainable module inside a frozen block must still train.
        backbone.vit.blocks[0].inner_adapter = nn.Dropout(0.5)
        self.head = LinearHead(backbone.embed_dim, 3)


def _backbone() -> Backbone:
    return Backbone.create("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, drop_rate=0.1,
                           drop_path_rate=0.1)


def test_only_named_parameters_train():
    backbone = _backbone()
    freeze_backbone(backbone, FrozenBackboneConfig(train_cls_token=True, train_pos_embed=False, train_norm=True))
    trainable = {name for name, p in backbone.named_parameters() if p.requires_grad}
    assert trainable == {"vit.cls_token", "vit.norm.weight", "vit.norm.bias"}


def test_frozen_modules_stay_in_eval_mode_and_new_ones_train():
    backbone = _backbone()
    freeze_backbone(backbone, FrozenBackboneConfig())
    model = _Probe(backbone).train()
    assert not any(module.training for module in backbone.modules() if module is not backbone.vit.blocks[0].inner_adapter)
    assert backbone.vit.blocks[0].inner_adapter.training
    assert model.training and model.adapter.training and model.adapter[1].training and model.head.training
    # A frozen backbone in eval mode is deterministic despite its dropout and drop-path.
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(backbone.vit.blocks[1](backbone.embed(x)), backbone.vit.blocks[1](backbone.embed(x)))
    model.eval()
    assert not model.adapter[1].training


def test_frozen_eval_false_lets_the_backbone_follow_train_mode():
    backbone = _backbone()
    freeze_backbone(backbone, FrozenBackboneConfig(frozen_eval=False))
    _Probe(backbone).train()
    assert all(module.training for module in backbone.modules())


def test_trainable_report_counts_and_groups():
    backbone = _backbone()
    freeze_backbone(backbone, FrozenBackboneConfig())
    model = _Probe(backbone)
    report = trainable_report(model)
    dim = backbone.embed_dim
    expected = {"backbone.vit": dim, "adapter.0": dim * 4 + 4, "head": dim * 3 + 3}
    assert report.to_dict()["modules"] == expected
    assert report.trainable == sum(expected.values())
    assert report.total == sum(p.numel() for p in model.parameters())
    assert "total" in report.format().splitlines()[-1]
