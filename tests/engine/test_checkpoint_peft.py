"""Adapter-only checkpoints: a frozen-backbone method on pretrained weights saves only what is not the
frozen backbone, plus the backbone's identity; restoring loads the backbone through model.weights and
gives bit-identical outputs, and a different backbone is refused by its hash."""

import pytest
import safetensors.torch
import torch
from safetensors import safe_open

from conftest import TINY, TINY_VIT
from fgir.config import load_config
from fgir.engine.checkpoint import (
    CheckpointError,
    backbone_hash,
    frozen_backbone_keys,
    load_checkpoint,
    load_model_state,
    read_backbone_identity,
    restore_model,
    save_checkpoint,
)
from fgir.methods import build_model
from fgir.models.weights import create_vit
from fgir.tools.merge_lora import save_merged_lora

CLASSES = ["a", "b", "c"]
METHOD_ARGS = {
    "lora": ["model.peft.lora_rank=2"],
    "vpt_deep": ["model.peft.prompt_length=2"],
    "bitfit": [],
    "ila": ["model.peft.ila_ds_layers=[0]"],  # BatchNorm statistics besides the trainable weights
    "linear": [],
}


def save_pretrained(path, seed: int) -> None:
    """A tiny random ViT's weights as the "pretrained" file that model.weights points at."""
    torch.manual_seed(seed)
    vit = create_vit("vit_tiny_patch16_224", pretrained=False, img_size=32, **TINY)
    with torch.no_grad():
        for parameter in vit.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.2)
    safetensors.torch.save_file(vit.state_dict(), str(path))


def config_for(method: str, weights, *extra: str):
    return load_config(None, ["model.backbone=vit_tiny_patch16_224", TINY_VIT, f"model.weights={weights}",
                              f"model.method={method}", "data.image_size=32", *METHOD_ARGS[method], *extra])


def trained(method: str, weights, *extra: str):
    """The method on the pretrained file, with its trainable tensors and BatchNorm statistics moved
    away from their initial values as training would."""
    config = config_for(method, weights, *extra)
    model = build_model(config.model, len(CLASSES), 32)
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.1)
        model.train()(torch.randn(4, 3, 32, 32))  # updates running statistics
    return model.eval(), config


@pytest.fixture
def pretrained(tmp_path):
    path = tmp_path / "pretrained.safetensors"
    save_pretrained(path, seed=0)
    return path


@pytest.mark.parametrize("method", METHOD_ARGS)
def test_adapter_only_round_trip_is_bit_identical_and_small(tmp_path, pretrained, method):
    model, config = trained(method, pretrained)
    path = save_checkpoint(tmp_path / "best.safetensors", model, config, CLASSES, epoch=1, global_step=5)
    with safe_open(str(path), framework="pt") as handle:
        stored = set(handle.keys())
    assert stored == model.state_dict().keys() - frozen_backbone_keys(model)
    assert {name for name, p in model.named_parameters() if p.requires_grad} <= stored
    if method == "ila":
        assert any(key.endswith("running_mean") for key in stored)
    full = save_checkpoint(tmp_path / "full.safetensors", model, config_for(method, pretrained, "model.pretrained=false"),
                           CLASSES, epoch=1, global_step=5)
    assert path.stat().st_size < 0.1 * full.stat().st_size

    checkpoint = load_checkpoint(path)
    assert checkpoint.backbone.model == "vit_tiny_patch16_224" and checkpoint.backbone.weights == str(pretrained)
    assert checkpoint.backbone.sha256 == backbone_hash(model) and read_backbone_identity(path) == checkpoint.backbone
    restored, _ = restore_model(path)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(restored(images), model(images))
    for key, value in model.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key


def test_a_different_backbone_is_refused_by_its_hash(tmp_path, pretrained):
    model, config = trained("lora", pretrained)
    path = save_checkpoint(tmp_path / "best.safetensors", model, config, CLASSES, epoch=1, global_step=5)
    save_pretrained(pretrained, seed=1)  # the weights file now holds another backbone
    with pytest.raises(CheckpointError, match=r"best.safetensors was trained on the backbone vit_tiny_patch16_224 "
                       r"\(weights .*pretrained.safetensors\) with SHA-256 .*different weights"):
        restore_model(path)


def test_adapter_only_state_without_its_identity_is_refused_with_a_hint(tmp_path, pretrained):
    model, config = trained("vpt_deep", pretrained)
    path = save_checkpoint(tmp_path / "best.safetensors", model, config, CLASSES, epoch=1, global_step=5)
    with pytest.raises(CheckpointError, match=r"best.safetensors does not fit the model: \d+ missing.*\n  missing: .*\n"
                       r"  it lacks just the frozen backbone: an adapter-only checkpoint"):
        load_model_state(model, load_checkpoint(path).model_state, str(path))


def test_the_hash_names_the_backbone_not_the_method(pretrained):
    """LoRA moves a linear's weights to `<name>.base_layer`; the hash is still the backbone's."""
    lora, _ = trained("lora", pretrained)
    linear, _ = trained("linear", pretrained)
    assert backbone_hash(lora) == backbone_hash(linear)
    vpt, _ = trained("vpt_deep", pretrained, "model.peft.train_cls_token=false")
    assert backbone_hash(vpt) != backbone_hash(lora)  # the CLS token now counts as frozen backbone


def test_full_checkpoints_for_random_backbones_and_other_methods(tmp_path, pretrained):
    for method, extra in (("lora", ["model.pretrained=false"]), ("bitfit", ["model.pretrained=false"])):
        model, config = trained(method, pretrained, *extra)
        path = save_checkpoint(tmp_path / f"{method}.safetensors", model, config, CLASSES, epoch=1, global_step=1)
        assert load_checkpoint(path).backbone is None and read_backbone_identity(path) is None
        assert load_checkpoint(path).model_state.keys() == model.state_dict().keys()
    config = load_config(None, ["model.backbone=vit_tiny_patch16_224", TINY_VIT, f"model.weights={pretrained}",
                                "data.image_size=32"])
    vit = build_model(config.model, len(CLASSES), 32)
    path = save_checkpoint(tmp_path / "vit.safetensors", vit, config, CLASSES, epoch=1, global_step=1)
    assert load_checkpoint(path).backbone is None and not frozen_backbone_keys(vit)


def test_adapter_only_lora_merges_into_a_full_vit_checkpoint(tmp_path, pretrained):
    model, config = trained("lora", pretrained)
    adapter = save_checkpoint(tmp_path / "lora.safetensors", model, config, CLASSES, epoch=1, global_step=5)
    merged_path = save_merged_lora(adapter, tmp_path / "merged.safetensors")
    merged = load_checkpoint(merged_path)
    assert merged.backbone is None and merged.config.model.method == "vit"
    pretrained.unlink()  # deployment needs neither the pretrained file nor peft's layers
    restored, _ = restore_model(merged_path)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(restored(images), model(images), rtol=0, atol=1e-5)
