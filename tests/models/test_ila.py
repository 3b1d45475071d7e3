import copy

import pytest
import torch
from torch.nn import functional as F

from conftest import tiny_backbone
from fgir.config import ConfigError, model_config
from fgir.models.backbone import Backbone
from fgir.models.ila import ILAConfig, build_ila, build_ila_plus, build_ila_pp
from fgir.models.layers.inter_layer_adapter import InterLayerAdapter
from fgir.models.trainable import trainable_report

SPEC_DS_ILA = {  # spec/ila.md, D=768, d=8
    "down": 6152,
    "up": 6912,
    "norm_down": 16,
    "norm_conv": 16,
    "norm_up": 16,
    "conv_depthwise": 80,
    "conv_pointwise": 72,
    "prefix_proj": 72,
    "residual_conv": 6912,
}


def counts_by_child(module: torch.nn.Module) -> dict[str, int]:
    counts = {}
    for name, parameter in module.named_parameters():
        child = name.split(".")[0]
        counts[child] = counts.get(child, 0) + parameter.numel()
    return counts


def vit_b16(image_size: int) -> Backbone:
    with torch.device("meta"):  # shapes only: no memory, no compute, no download
        return Backbone.create("vit_base_patch16_224", pretrained=False, img_size=image_size)


def test_module_parameter_counts_match_the_spec():
    downsampling = InterLayerAdapter(768, 1, downsample=True)
    assert counts_by_child(downsampling) == SPEC_DS_ILA
    assert sum(SPEC_DS_ILA.values()) == 20_248
    same = InterLayerAdapter(768, 1, downsample=False)
    assert counts_by_child(same) == {k: v for k, v in SPEC_DS_ILA.items() if k != "residual_conv"}
    assert sum(p.numel() for p in same.parameters()) == 13_336


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (build_ila, 2 * 20_248 + 768),
        (build_ila_plus, 10 * 13_336 + 2 * 20_248 + 768),  # 174.6 K
        (build_ila_pp, 12 * 2 * 13_064 + 2 * 20_248 + 768),  # 354.8 K
    ],
)
def test_trainable_parameters_per_task_besides_the_head_match_the_spec(build, expected):
    with torch.device("meta"):
        model = build(vit_b16(224), 80, model_config("ila"))
    head = 768 * 80 + 80
    assert trainable_report(model).trainable - head == expected
    assert round(expected / 1000, 1) in {41.3, 174.6, 354.8}


@pytest.mark.parametrize(("size", "tokens"), [(224, [197, 145, 101]), (448, [785, 677, 577])])
def test_token_counts_of_vit_b16_shrink_after_blocks_3_and_7(size, tokens):
    with torch.device("meta"):
        model = build_ila(vit_b16(size), 10, model_config("ila")).eval()
    seen = []
    for block in model.backbone.blocks:
        block.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    logits = model(torch.empty(2, 3, size, size, device="meta"))
    assert logits.shape == (2, 10)
    assert seen == [tokens[0]] * 4 + [tokens[1]] * 4 + [tokens[2]] * 4


def sum_pool_3x3(grid_tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Valid 3x3 sum pool of row-major patch tokens (B, h*w, D), written as a loop."""
    out = []
    for row in range(height - 2):
        for col in range(width - 2):
            window = [grid_tokens[:, (row + i) * width + col + j] for i in range(3) for j in range(3)]
            out.append(torch.stack(window).sum(0))
    return torch.stack(out, dim=1)


def test_at_the_start_a_ds_ila_is_a_3x3_sum_pool_on_a_rectangular_grid_and_prefix_tokens_pass():
    torch.manual_seed(0)
    prefix, height, width, dim = 3, 5, 7, 16  # CLS + 2 registers
    ila = InterLayerAdapter(dim, prefix, downsample=True).train()
    weight = ila.residual_conv.weight
    assert weight.shape == (dim, 1, 3, 3)
    assert abs(weight.mean().item() - 1) < 1e-3 and 0.0005 < weight.std().item() < 0.002
    tokens = torch.randn(4, prefix + height * width, dim)
    out = ila(tokens, (height, width))
    assert ila.output_grid((height, width)) == (3, 5)
    assert out.shape == (4, prefix + 3 * 5, dim)
    assert torch.equal(out[:, :prefix], tokens[:, :prefix])
    torch.testing.assert_close(
        out[:, prefix:], sum_pool_3x3(tokens[:, prefix:], height, width), rtol=0, atol=0.05
    )
    with torch.no_grad():
        ila.residual_conv.weight.fill_(1.0)
    exact = ila(tokens, (height, width))[:, prefix:]
    torch.testing.assert_close(exact, sum_pool_3x3(tokens[:, prefix:], height, width))


def reference_branch(ila: InterLayerAdapter, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The adapter branch in evaluation mode, from the spec, one token and one window at a time."""

    def batch_norm(x, norm):  # x (..., d)
        return (x - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps) * norm.weight + norm.bias

    prefix, (height, width) = ila.num_prefix_tokens, grid
    hidden = F.gelu(batch_norm(tokens @ ila.down.weight.T + ila.down.bias, ila.norm_down))
    pad = 0 if ila.downsample else 1
    padded = torch.zeros(tokens.shape[0], height + 2 * pad, width + 2 * pad, hidden.shape[-1])
    padded[:, pad : pad + height, pad : pad + width] = hidden[:, prefix:].reshape(
        -1, height, width, hidden.shape[-1]
    )
    kernel = ila.conv_depthwise.weight[:, 0]  # (d, 3, 3)
    out_h, out_w = ila.output_grid(grid)
    patches = []
    for row in range(out_h):
        for col in range(out_w):
            window = padded[:, row : row + 3, col : col + 3]  # (B, 3, 3, d)
            depthwise = (window * kernel.permute(1, 2, 0)).sum((1, 2)) + ila.conv_depthwise.bias
            activated = F.gelu(batch_norm(depthwise, ila.norm_conv))
            patches.append(activated @ ila.conv_pointwise.weight[:, :, 0, 0].T + ila.conv_pointwise.bias)
    cls = hidden[:, :prefix] @ ila.prefix_proj.weight.T + ila.prefix_proj.bias
    joined = torch.cat([cls, torch.stack(patches, 1)], 1)
    return F.gelu(batch_norm(joined, ila.norm_up)) @ ila.up.weight.T + ila.up.bias


@pytest.mark.parametrize("downsample", [True, False])
def test_ila_equals_the_spec_computed_token_by_token(downsample):
    torch.manual_seed(0)
    prefix, grid, dim = 2, (4, 6), 12
    ila = InterLayerAdapter(dim, prefix, downsample=downsample)
    with torch.no_grad():
        for parameter in ila.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.5)
        for norm in (ila.norm_down, ila.norm_conv, ila.norm_up):
            norm.running_mean.copy_(torch.randn_like(norm.running_mean))
            norm.running_var.copy_(torch.rand_like(norm.running_var) + 0.5)
    ila.eval()
    tokens = torch.randn(3, prefix + grid[0] * grid[1], dim)
    residual = ila._residual(tokens, grid) if downsample else tokens
    expected = residual + reference_branch(ila, tokens, grid)
    torch.testing.assert_close(ila(tokens, grid), expected, rtol=1e-4, atol=1e-4)


def test_rectangular_grid_through_a_whole_model():
    backbone = tiny_backbone(img_size=(48, 80), depth=3)  # patch 8: 6x10 grid
    model = build_ila(backbone, 3, model_config("ila", peft=ILAConfig(ila_ds_layers=[0, 1]))).eval()
    seen = []
    for block in backbone.blocks:
        block.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    assert model(torch.randn(2, 3, 48, 80)).shape == (2, 3)
    assert seen == [1 + 6 * 10, 1 + 4 * 8, 1 + 2 * 6]
    assert model.token_grids((6, 10)) == {0: (4, 8), 1: (2, 6), 2: (2, 6)}


def test_register_tokens_travel_with_the_cls_token():
    backbone = tiny_backbone(img_size=48, depth=2, reg_tokens=2)
    model = build_ila(backbone, 3, model_config("ila", peft=ILAConfig(ila_ds_layers=[0]))).eval()
    seen = []
    backbone.blocks[1].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    assert model(torch.randn(2, 3, 48, 48)).shape == (2, 3)
    assert seen == [3 + 4 * 4]


def test_models_without_cls_token_have_no_prefix_projection():
    backbone = tiny_backbone(img_size=48, depth=2, class_token=False, global_pool="avg")
    model = build_ila(backbone, 3, model_config("ila", peft=ILAConfig(ila_ds_layers=[0]))).eval()
    assert model.inter_layer["0"].prefix_proj is None
    assert model(torch.randn(2, 3, 48, 48)).shape == (2, 3)


def test_frozen_backbone_stays_in_eval_mode_while_ila_batchnorms_learn_statistics():
    torch.manual_seed(0)
    backbone = tiny_backbone(img_size=48, depth=2, drop_rate=0.5, proj_drop_rate=0.5, drop_path_rate=0.5)
    peft = ILAConfig(ila_ds_layers=[0], dropout=0.0)
    model = build_ila_plus(backbone, 3, model_config("ila", zero_init_head=False, peft=peft)).train()
    assert not any(module.training for module in backbone.modules())
    ila_modules = list(model.inter_layer.modules())
    assert all(module.training for module in ila_modules)
    norm = model.inter_layer["0"].norm_down
    before = norm.running_mean.clone()
    images = torch.randn(4, 3, 48, 48)
    first, second = model(images), model(images)
    assert torch.equal(first, second)  # backbone dropout and drop-path are off
    assert not torch.equal(norm.running_mean, before)
    assert norm.num_batches_tracked == 2
    model.eval()
    model(images)
    assert norm.num_batches_tracked == 2

    following = build_ila(
        copy.deepcopy(backbone),
        3,
        model_config("ila", zero_init_head=False, peft=ILAConfig(ila_ds_layers=[0], frozen_eval=False)),
    )
    following.train()
    assert not torch.equal(following(images), following(images))  # frozen_eval=False: backbone dropout on


@pytest.mark.parametrize(
    ("peft", "message"),
    [
        (ILAConfig(ila_ds_layers=[0, 4]), r"model.peft.ila_ds_layers: block indices \[4\] outside 0..3"),
        (
            ILAConfig(ila_ds_layers=[1, 1]),
            r"model.peft.ila_ds_layers: block indices \[1\] given more than once",
        ),
        (
            ILAConfig(ila_ds_layers=[1], ila_layers=[-1]),
            r"model.peft.ila_layers: block indices \[-1\] outside",
        ),
        (
            ILAConfig(ila_ds_layers=[1, 2], ila_layers=[0, 2]),
            r"ila_layers and model.peft.ila_ds_layers both place an ILA after blocks \[2\]",
        ),
    ],
)
def test_bad_placements_are_config_errors(peft, message):
    with pytest.raises(ConfigError, match=message):
        build_ila_plus(tiny_backbone(img_size=48, depth=4), 3, model_config("ila", peft=peft))


def test_explicit_same_resolution_placement():
    peft = ILAConfig(ila_ds_layers=[1], ila_layers=[0, 3])
    model = build_ila_plus(tiny_backbone(img_size=48, depth=4), 3, model_config("ila", peft=peft))
    assert {key: module.downsample for key, module in model.inter_layer.items()} == {
        "0": False,
        "1": True,
        "3": False,
    }


def test_a_grid_too_small_to_down_sample_is_an_error():
    model = build_ila(
        tiny_backbone(img_size=32, depth=3), 3, model_config("ila", peft=ILAConfig(ila_ds_layers=[0, 1]))
    )
    with pytest.raises(ValueError, match=r"needs a patch grid of at least 3x3, got 2x2"):
        model(torch.randn(1, 3, 32, 32))  # 4x4 -> 2x2 -> too small


def test_token_count_must_match_the_grid():
    ila = InterLayerAdapter(16, 1, downsample=True)
    with pytest.raises(ValueError, match=r"ILA got 10 tokens, expected 17 \(1 prefix \+ 4x4 patch grid\)"):
        ila(torch.randn(1, 10, 16), (4, 4))
