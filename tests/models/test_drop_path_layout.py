"""model.drop_path_layout: timm's linear ramp, or the references' constant rate in every block and
in GLSim's aggregator."""

import pytest
from timm.layers import DropPath

from conftest import TINY_VIT
from fgir.config import load_config
from fgir.methods import build_model


def rates(blocks) -> list[float]:
    return [block.drop_path1.drop_prob if isinstance(block.drop_path1, DropPath) else 0.0 for block in blocks]


def model(*overrides):
    config = load_config(None, ["model.backbone=vit_tiny_patch16_224", "model.pretrained=false",
                                TINY_VIT.replace("depth: 2", "depth: 4"), "model.drop_path=0.1", *overrides])
    return build_model(config.model, 3, 32)


def test_linear_is_timms_ramp_and_uniform_the_references_constant_rate():
    assert rates(model().backbone.blocks) == pytest.approx([0.0, 0.1 / 3, 0.2 / 3, 0.1])
    uniform = model("model.drop_path_layout=uniform").backbone.blocks
    assert rates(uniform) == pytest.approx([0.1] * 4)
    assert all(isinstance(b.drop_path2, DropPath) and b.drop_path2.drop_prob == 0.1 for b in uniform)


def test_glsims_aggregator_gets_the_rate_only_in_the_uniform_layout():
    assert not isinstance(model("model.method=glsim", "model.glsim.top_o=4").aggregator.block.drop_path1, DropPath)
    glsim = model("model.method=glsim", "model.glsim.top_o=4", "model.drop_path_layout=uniform")
    assert glsim.aggregator.block.drop_path1.drop_prob == pytest.approx(0.1)


def test_an_unknown_layout_is_refused():
    with pytest.raises(ValueError, match="model.drop_path_layout' must be one of linear, uniform"):
        load_config(None, ["model.drop_path_layout=ramp"])
