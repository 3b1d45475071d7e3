import numpy as np
import pytest
import torch
from PIL import Image
from timm.models.vision_transformer import VisionTransformer

from fgir.config import Config, DataConfig, model_config
from fgir.engine.checkpoint import save_checkpoint
from fgir.methods import build_model
from fgir.models.backbone import Backbone
from fgir.models.glsim import GLSimConfig
from fgir.models.layers.attention_capture import attention_matrices, recorded_attention
from fgir.tools.attention import (
    attention_rollout,
    last_layer_cls_attention,
)
from fgir.tools.explain import explain_images, explanation_panels


def tiny_backbone(depth: int = 1, **kwargs) -> Backbone:
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=depth, num_heads=2, num_classes=0,
                            **kwargs)
    return Backbone(vit.eval())


def images(count: int = 2) -> torch.Tensor:
    return torch.randn(count, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def attention_by_hand(backbone: Backbone, batch: torch.Tensor) -> torch.Tensor:
    """Block 0's softmax(q k^T / sqrt(d)) from its weights, (B, heads, T, T)."""
    attn = backbone.blocks[0].attn
    tokens = backbone.blocks[0].norm1(backbone.embed(batch))
    q, k, _ = attn.qkv(tokens).reshape(*tokens.shape[:2], 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    return (q @ k.transpose(-2, -1) * attn.head_dim ** -0.5).softmax(-1)


def rollout_by_hand(matrices: list[torch.Tensor]) -> torch.Tensor:
    result = torch.eye(matrices[0].shape[-1])
    for matrix in matrices:
        step = matrix.mean(1) + torch.eye(matrix.shape[-1])
        result = (step / step.sum(-1, keepdim=True)) @ result
    return result


def test_recorded_attention_is_the_softmax_of_the_block_and_rollout_of_one_block_matches():
    backbone, batch = tiny_backbone(depth=1), images()
    (captured,) = attention_matrices(backbone, batch)
    with torch.no_grad():
        assert torch.allclose(captured, attention_by_hand(backbone, batch), atol=1e-6)
    step = captured.mean(1) + torch.eye(5)  # CLS + 2 x 2 patches
    expected = (step / step.sum(-1, keepdim=True))[:, 0, 1:].reshape(2, 2, 2)
    assert torch.allclose(attention_rollout(backbone, batch), expected, atol=1e-6)
    assert torch.allclose(last_layer_cls_attention(backbone, batch), captured.mean(1)[:, 0, 1:].reshape(2, 2, 2))


def test_register_tokens_are_left_out_and_blocks_multiply_last_to_first():
    backbone, batch = tiny_backbone(depth=3, reg_tokens=2), images()
    matrices = attention_matrices(backbone, batch)
    assert len(matrices) == 3 and matrices[0].shape == (2, 2, 7, 7)  # CLS + 2 registers + 4 patches
    full = rollout_by_hand(matrices)
    assert torch.allclose(full.sum(-1), torch.ones(2, 7), atol=1e-5)  # rows stay distributions
    rollout = attention_rollout(backbone, batch)
    assert torch.allclose(rollout, full[:, 0, 3:].reshape(2, 2, 2), atol=1e-6)
    last = last_layer_cls_attention(backbone, batch)
    assert last.shape == (2, 2, 2)
    # The patches get what the CLS row does not give to itself and the registers.
    assert torch.allclose(last.sum((1, 2)), 1 - matrices[-1].mean(1)[:, 0, :3].sum(-1), atol=1e-6)


def test_without_a_cls_token_the_mean_patch_row_is_used():
    backbone, batch = tiny_backbone(depth=2, class_token=False, global_pool="avg"), images()
    last = attention_matrices(backbone, batch)[-1].mean(1)
    assert torch.allclose(last_layer_cls_attention(backbone, batch), last.mean(1).reshape(2, 2, 2), atol=1e-6)


def test_fused_flags_and_hooks_are_restored_even_on_error():
    backbone = tiny_backbone(depth=2)
    for block in backbone.blocks:
        block.attn.fused_attn = True
    attention_rollout(backbone, images())
    with pytest.raises(Exception), recorded_attention(backbone):  # noqa: B017, PT011
        assert not any(block.attn.fused_attn for block in backbone.blocks)
        backbone.forward_features(torch.randn(1, 3, 24, 24))  # wrong size for this ViT
    assert all(block.attn.fused_attn for block in backbone.blocks)
    assert not any(block.attn.attn_drop._forward_pre_hooks for block in backbone.blocks)


def test_rollout_rejects_a_discard_ratio_of_one():
    with pytest.raises(ValueError, match="discard_ratio"):
        attention_rollout(tiny_backbone(), images(), discard_ratio=1.0)


def tiny_model_config(method: str) -> Config:
    data = DataConfig(name="toy", format="csv", root=".", num_classes=3, image_size=32, resize_ratio=1.25)
    own = {"glsim": GLSimConfig(top_o=4)} if method == "glsim" else {}
    model = model_config(method, backbone="vit_tiny_patch16_224", pretrained=False,
                         backbone_args={"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}, **own)
    return Config(data=data, model=model)


def saved_checkpoint(tmp_path, method: str):
    config = tiny_model_config(method)
    torch.manual_seed(0)
    model = build_model(config.model, 3, 32, pretrained=False).eval()
    path = save_checkpoint(tmp_path / f"{method}.safetensors", model, config, ["ant", "bee", "cat"],
                           epoch=1, global_step=1)
    return path, model


def write_images(folder, names):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(folder / name)


def test_glsim_figures_are_written_per_image_with_all_six_panels(tmp_path):
    path, model = saved_checkpoint(tmp_path, "glsim")
    write_images(tmp_path / "photos", ["a.png", "b.jpg"])
    written = explain_images(path, [tmp_path / "photos"], tmp_path / "out", device="cpu")
    assert [p.name for p in written] == ["a_explain.png", "b_explain.png"]
    assert all(Image.open(p).format == "PNG" for p in written)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_explain.png", "b_explain.png"]

    batch = torch.randn(1, 3, 32, 32)
    shown = np.zeros((32, 32, 3))
    panels = explanation_panels(model, model.backbone, batch, shown)
    assert [p[0].split(" (")[0] for p in panels] == [
        "input", "GLS similarity", "selected box", "crop", "last-layer attention", "attention rollout"]
    x0, y0, x1, y1 = model.forward_details(batch).boxes[0].tolist()
    assert panels[2][3] == (x0, y0, x1, y1) and panels[3][1].shape == (y1 - y0, x1 - x0, 3)
    heat = panels[1][2]
    assert heat.shape == (32, 32) and heat.min() == 0.0 and heat.max() == pytest.approx(1.0)
    # The hottest pixel lies in the patch with the highest GLS score (4 x 4 grid of 8 px patches).
    best = int(model.forward_details(batch).scores[0].argmax())
    row, col = np.unravel_index(heat.argmax(), heat.shape)
    assert (row // 8, col // 8) == divmod(best, 4)


def test_a_plain_vit_checkpoint_gets_input_and_attention_only_and_same_stems_do_not_clash(tmp_path):
    path, model = saved_checkpoint(tmp_path, "vit")
    write_images(tmp_path / "one", ["x.png"])
    write_images(tmp_path / "two", ["x.png"])
    written = explain_images(path, [tmp_path / "one" / "x.png", tmp_path / "two"], tmp_path / "out", device="cpu")
    assert [p.name for p in written] == ["x_explain.png", "x_2_explain.png"]
    panels = explanation_panels(model, model.backbone, torch.randn(1, 3, 32, 32), np.zeros((32, 32, 3)))
    assert [p[0] for p in panels] == ["input", "last-layer attention", "attention rollout"]
