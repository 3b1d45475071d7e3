"""The frozen settings of the comparison methods save adapter-only checkpoints (no frozen backbone
tensor) that restore bit-identically: MPN-COV's BatchNorm statistics, VQT's queries, and TransFG's
position embedding resampled for overlapping patches, rebuilt from the pretrained file."""

import pytest
import torch
from safetensors import safe_open

from conftest import TINY_VIT, save_random_vit
from fgir.config import load_config
from fgir.engine.checkpoint import frozen_backbone_keys, restore_model, save_checkpoint
from fgir.methods import build_model

FROZEN = {
    "mpncov": ["model.mpncov.reduction=4"],
    "vqt": ["model.vqt.query_tokens=2"],
    "transfg": ["model.transfg.frozen=true", "model.transfg.overlap_stride=6"],
    "ffvt": ["model.ffvt.frozen=true", "model.ffvt.tokens_per_layer=4"],
}


@pytest.mark.parametrize("method", FROZEN)
def test_adapter_only_checkpoint_round_trip(tmp_path, method):
    weights = tmp_path / "pretrained.safetensors"
    save_random_vit(weights, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    config = load_config(None, ["model.backbone=vit_tiny_patch16_224", TINY_VIT, f"model.weights={weights}",
                                f"model.method={method}", "data.image_size=32", *FROZEN[method]])
    model = build_model(config.model, 3, 32)
    torch.manual_seed(1)
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    with torch.no_grad():
        for parameter in trainable:
            parameter.normal_(std=0.1)  # away from zero heads and unit norms
        model.train()(torch.randn(4, 3, 32, 32))  # running statistics move
    model.eval()
    path = save_checkpoint(tmp_path / "best.safetensors", model, config, ["a", "b", "c"], epoch=1, global_step=1)
    with safe_open(str(path), framework="pt") as handle:
        stored = set(handle.keys())
    assert stored == model.state_dict().keys() - frozen_backbone_keys(model)
    assert not any(key.startswith("backbone.vit.blocks.") for key in stored)
    restored, _ = restore_model(path)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(restored(images), model(images))
