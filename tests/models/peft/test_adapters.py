import copy

import pytest
import torch
from timm.models.vision_transformer import Attention
from torch.nn import functional as F

from conftest import tiny_backbone
from fgir.config import model_config
from fgir.models.layers.bottleneck_adapter import BottleneckAdapter
from fgir.models.layers.conv_pass import ConvPass
from fgir.models.peft.adapters import attach_parallel_adapters, build_adapter, build_convpass
from fgir.models.peft.freezing import FrozenBackboneConfig, freeze_backbone


def counts_by_child(module: torch.nn.Module) -> dict[str, int]:
    counts = {}
    for name, parameter in module.named_parameters():
        counts[name.split(".")[0]] = counts.get(name.split(".")[0], 0) + parameter.numel()
    return counts


def randomize(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.3)


def test_parameter_counts_match_the_spec():
    assert counts_by_child(BottleneckAdapter(768, 8)) == {"down": 6152, "up": 6912}  # 13,064
    assert counts_by_child(ConvPass(768, 1, 8)) == {"down": 6152, "conv": 584, "up": 6912}  # 13,648


def test_adapters_start_as_the_frozen_model_and_keep_its_parameter_names():
    backbone = tiny_backbone(img_size=48, depth=2)
    plain = copy.deepcopy(backbone)
    freeze_backbone(backbone, FrozenBackboneConfig())
    adapters = attach_parallel_adapters(backbone, lambda: BottleneckAdapter(backbone.embed_dim, 4))
    assert len(adapters) == 2 * 2
    assert all(isinstance(block.attn, Attention) for block in backbone.blocks)
    old, new = set(plain.state_dict()), set(backbone.state_dict())
    assert old < new
    assert new - old == {
        f"vit.blocks.{i}.{site}_adapter.{layer}.{kind}"
        for i in range(2)
        for site in ("attn", "mlp")
        for layer in ("down", "up")
        for kind in ("weight", "bias")
    }
    images = torch.randn(2, 3, 48, 48)
    assert torch.equal(backbone.forward_features(images), plain.forward_features(images))


def test_an_adapted_block_adds_the_adapters_beside_attention_and_mlp():
    backbone = tiny_backbone(img_size=48, depth=1)
    block = copy.deepcopy(backbone.blocks[0])
    attach_parallel_adapters(
        backbone, lambda: BottleneckAdapter(backbone.embed_dim, 4, dropout=0.5, scale=0.7)
    )
    adapted = backbone.blocks[0]
    randomize(adapted.attn_adapter)
    randomize(adapted.mlp_adapter)
    adapted.eval()

    def adapter(module, x):  # the spec's bottleneck: up(GELU(down(x))), times the scale
        return 0.7 * (
            F.gelu(x @ module.down.weight.T + module.down.bias) @ module.up.weight.T + module.up.bias
        )

    x = backbone.embed(torch.randn(2, 3, 48, 48))
    normed = block.norm1(x)
    x1 = x + block.attn(normed) + adapter(adapted.attn_adapter, normed)
    normed = block.norm2(x1)
    expected = x1 + block.mlp(normed) + adapter(adapted.mlp_adapter, normed)
    torch.testing.assert_close(adapted(x), expected)


def test_convpass_equals_its_definition_with_the_prefix_as_padded_1x1_maps():
    torch.manual_seed(0)
    prefix, (height, width), dim = 2, (3, 5), 12
    convpass = ConvPass(dim, prefix, 4, scale=2.0).eval()
    randomize(convpass)
    convpass.grid = (height, width)
    tokens = torch.randn(3, prefix + height * width, dim)

    def quick_gelu(x):
        return x * torch.sigmoid(1.702 * x)

    hidden = quick_gelu(tokens @ convpass.down.weight.T + convpass.down.bias)
    maps = hidden[:, prefix:].reshape(3, height, width, 4).permute(0, 3, 1, 2)
    patches = F.conv2d(maps, convpass.conv.weight, convpass.conv.bias, padding=1).flatten(2).transpose(1, 2)
    # The reference puts each prefix token through the same padded conv as a 1x1 map.
    prefix_maps = hidden[:, :prefix].reshape(3 * prefix, 4, 1, 1)
    prefix_out = F.conv2d(prefix_maps, convpass.conv.weight, convpass.conv.bias, padding=1)[:, :, 0, 0]
    joined = torch.cat([prefix_out.reshape(3, prefix, 4), patches], dim=1)
    expected = 2.0 * (quick_gelu(joined) @ convpass.up.weight.T + convpass.up.bias)
    torch.testing.assert_close(convpass(tokens), expected)


def test_convpass_starts_with_an_identity_convolution_and_a_zero_output():
    convpass = ConvPass(16, 1, 4)
    weight = convpass.conv.weight
    assert torch.equal(weight[:, :, 1, 1], torch.eye(4))
    assert weight.abs().sum() == 4 and convpass.conv.bias.abs().sum() == 0
    convpass.grid = (2, 2)
    assert torch.equal(convpass(torch.randn(2, 5, 16)), torch.zeros(2, 5, 16))


def test_convpass_needs_the_grid_of_the_tokens():
    convpass = ConvPass(16, 1, 4)
    with pytest.raises(RuntimeError, match="ConvPass.grid is not set"):
        convpass(torch.randn(1, 5, 16))
    convpass.grid = (3, 3)
    with pytest.raises(
        ValueError, match=r"ConvPass got 5 tokens, expected 10 \(1 prefix \+ 3x3 patch grid\)"
    ):
        convpass(torch.randn(1, 5, 16))


def test_convpass_model_on_a_rectangular_grid():
    model = build_convpass(tiny_backbone(img_size=(32, 56), depth=2), 3, model_config("adapter", zero_init_head=False))
    assert model(torch.randn(2, 3, 32, 56)).shape == (2, 3)
    assert model.backbone.blocks[1].mlp_adapter.grid == (4, 7)


def test_deep_copies_run_their_own_adapters():
    model = build_adapter(tiny_backbone(img_size=48, depth=1), 3, model_config("adapter", zero_init_head=False)).eval()
    twin = copy.deepcopy(model)
    images = torch.randn(2, 3, 48, 48)
    before = model(images)
    randomize(twin.backbone.blocks[0].mlp_adapter)
    assert torch.equal(model(images), before)
    assert not torch.equal(twin(images), before)


def test_attaching_errors():
    backbone = tiny_backbone(img_size=48, depth=1)
    with pytest.raises(ValueError, match=r"adapter sites \['norm1'\]: known sites are \['attn', 'mlp'\]"):
        attach_parallel_adapters(backbone, lambda: BottleneckAdapter(backbone.embed_dim), sites=("norm1",))
    attach_parallel_adapters(backbone, lambda: BottleneckAdapter(backbone.embed_dim), sites=("mlp",))
    with pytest.raises(ValueError, match=r"block 0 already has a 'mlp_adapter'"):
        attach_parallel_adapters(backbone, lambda: BottleneckAdapter(backbone.embed_dim))
