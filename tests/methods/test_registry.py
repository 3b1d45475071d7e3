"""The method registry: registration, the per-method config schema (each method's own section, checked
when a config loads), configs written before methods owned their sections, and a method added by
another package through the `fgir.methods` entry-point group."""

import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

import fgir.methods as methods
import fgir.methods.builtin as builtin
from conftest import tiny_backbone, tiny_overrides
from fgir.cli import main
from fgir.config import (
    ConfigError,
    from_dict,
    load_config,
    load_saved_config,
    model_config,
    save_config,
    to_dict,
)
from fgir.methods import build_model, get_method, method_names, register_method
from fgir.models.classifier import ViTClassifier


def built_in_listing() -> dict[str, list[str]]:
    """{module: the methods its line in fgir/methods/builtin.py says it registers}."""
    listing = {}
    for line in (Path(builtin.__file__)).read_text().splitlines():
        if line.startswith('    "fgir.models.'):
            module, names = line.strip().split(",  # ")
            listing[module.strip('"')] = [name.strip() for name in names.split(",")]
    assert list(listing) == list(builtin.MODULES)
    return listing


@pytest.fixture
def registry(monkeypatch):
    """The registry as it is, restored after the test (methods registered in it disappear)."""
    monkeypatch.setattr(methods, "_METHODS", dict(methods._METHODS))
    method_names()  # built-ins loaded into the copy
    return methods._METHODS


def one_error_line(capsys, verb: str) -> str:
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith(f"fgir {verb}: error: "), lines
    return lines[0]


def test_every_built_in_method_is_registered_once_in_its_own_module():
    # The import list is the one place a built-in method is named: each line's comment lists what
    # its module registers, and the registry holds exactly those, in that order.
    listing = built_in_listing()
    assert method_names() == [name for names in listing.values() for name in names]
    for module, names in listing.items():
        assert {get_method(name).build.__module__ for name in names} == {module}


def test_the_order_is_the_listing_whatever_module_was_imported_first():
    code = ("import fgir.models.peft.lora, fgir.models.glsim\n"
            "from fgir.methods import method_names\nprint(','.join(method_names()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().split(",") == [name for names in built_in_listing().values() for name in names]


def test_a_registered_method_builds_and_a_name_is_taken_once(registry):
    def build(backbone, num_classes, model):
        return ViTClassifier(backbone, num_classes, zero_init_head=model.zero_init_head)

    spec = register_method("plain_copy", build=build)
    assert get_method("plain_copy") is spec and "plain_copy" in method_names()
    config = load_config(None, ["model.method=plain_copy", "model.backbone=vit_tiny_patch16_224",
                                "model.pretrained=false", "model.backbone_args={patch_size: 8, embed_dim: 32, depth: 2, "
                                "num_heads: 2}"])
    assert isinstance(build_model(config.model, 3, 32), ViTClassifier)
    with pytest.raises(ValueError, match="method 'plain_copy' is already registered"):
        register_method("plain_copy", build=build)
    with pytest.raises(ValueError, match=r"method 'glsim' is already registered \(by fgir.models.glsim\)"):
        register_method("glsim", build=build)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.method=glsm", "unknown method model.method='glsm' (known: adapter, bitfit, cal, cal_cnn, cnn, convpass, ffvt, glsim, "),
        ("model.backbone=vit_nonexistent", "config key 'model.backbone': unknown timm model 'vit_nonexistent'"),
        ("model.backbone=vit_tiny_patch16_224.in99k", "config key 'model.backbone': timm has no tag 'in99k'"),
    ],
)
def test_method_and_backbone_are_checked_when_the_config_loads(tmp_path, capsys, override, message):
    assert main(["train", *tiny_overrides(tmp_path, override), "--no-progress"]) == 2
    line = one_error_line(capsys, "train")
    assert message in line
    if override == "model.method=glsm":
        assert line.endswith("did you mean 'glsim'?")
    assert not (tmp_path / "runs").exists()  # refused before any work


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # Another method's key names the method that owns it.
        (["model.method=vit", "model.glsim.top_o=4"], r"config key 'model.glsim' \(command line 'model.glsim.top_o=4'\) "
                                                       r"is an option of method glsim, not of model.method='vit'"),
        (["model.method=ila", "model.peft.lora_rank=2"], r"'model.peft.lora_rank' .* of method lora, not of model.method='ila'"),
        (["model.peft.prompt_length=4", "model.method=lora"], r"'model.peft.prompt_length' .* of method vpt_shallow, vpt_deep"),
        (["model.method=glsim", "model.glsim.top_k=4"], r"unknown config key 'model.glsim.top_k' .*; did you mean 'model.glsim.top_o'"),
        # A section checks its values on the fields, with the full key.
        (["model.method=glsim", "model.glsim.similarity=cosin"],
         r"config key 'model.glsim.similarity' must be one of cosine, l1, l2, got 'cosin'; did you mean 'cosine'\?"),
        (["model.method=lora", "model.peft.lora_dropout=1.0"], r"config key 'model.peft.lora_dropout' must be in \[0, 1\), got 1.0"),
    ],
)
def test_method_keys_are_checked_against_the_method_the_config_selects(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_a_section_checks_itself_when_made_from_python():
    from fgir.models.peft.adapters import AdapterConfig

    with pytest.raises(ConfigError, match=r"config key 'model.peft.bottleneck' must be > 0, got 0"):
        AdapterConfig(bottleneck=0)


def test_a_saved_config_carries_only_its_own_methods_section(tmp_path):
    for method, section, absent in [("vit", None, ()), ("glsim", "glsim", ()),
                                    ("lora", "peft", ("prompt_length", "bottleneck", "ila_ds_layers"))]:
        config = load_config(None, [f"model.method={method}"])
        save_config(config, tmp_path / "config.yaml")
        saved = yaml.safe_load((tmp_path / "config.yaml").read_text())["model"]
        others = {"glsim", "ifa", "peft"} - {section}
        assert not others & set(saved), (method, saved)
        if section:
            assert set(saved[section]).isdisjoint(absent) and saved[section]
        assert load_config(tmp_path / "config.yaml") == config


def legacy_tree(method: str) -> dict:
    """A config as the code before the registry saved it: every method's section, the whole peft bag."""
    tree = to_dict(load_config(None, [f"model.method={method}"]))
    peft = {"train_cls_token": True, "train_pos_embed": False, "train_norm": False, "frozen_eval": True,
            "bottleneck": 8, "dropout": 0.1, "ila_ds_layers": [3, 7], "ila_layers": None, "prompt_length": 100,
            "prompt_dropout": 0.0, "lora_rank": 8, "lora_alpha": 8.0, "lora_dropout": 0.0,
            "lora_targets": ["qkv", "fc1", "fc2"]}
    tree["model"] |= {"glsim": {"top_o": 8, "similarity": "cosine", "box": "inclusive", "crop_cls": "separate",
                                "selection": "crop", "head": "token", "test_flip": False},
                      "ifa": {"exclusion_loss": False, "exclusion_weight": 0.01, "temperature": 1.0,
                              "exclusion_distance": 2},
                      "peft": {**peft, **tree["model"].get("peft", {})}}
    return tree


@pytest.mark.parametrize("method", ["vit", "ila", "lora", "glsim"])
def test_configs_saved_before_methods_owned_their_sections_load_without_the_others(tmp_path, method):
    tree = legacy_tree(method)
    expected = load_config(None, [f"model.method={method}"])
    assert from_dict(tree, origin="checkpoint old.safetensors") == expected
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tree))
    assert load_saved_config(tmp_path / "config.yaml") == expected  # what train.resume reads
    with pytest.raises(ConfigError, match="is an option of method"):  # a recipe the user writes is held to the schema
        load_config(tmp_path / "config.yaml")
    tree["model"]["no_such_key"] = 1  # unknown to every method: still an error
    with pytest.raises(ConfigError, match="unknown config key 'model.no_such_key'"):
        from_dict(tree)


def test_a_check_sees_the_backbone_facts(tmp_path):
    from fgir.methods.checks import backbone_facts, check_before_work

    config = load_config(None, tiny_overrides(tmp_path, "model.method=glsim", "model.glsim.top_o=17"))
    facts = backbone_facts(config)
    assert (facts.depth, facts.width, facts.patch_size, facts.grid, facts.patches) == (2, 32, (8, 8), (4, 4), 16)
    with pytest.raises(ConfigError, match=r"model.glsim.top_o=17 is larger than the number of patches"):
        check_before_work(config)
    ila = load_config(None, tiny_overrides(tmp_path, "model.method=ila_plus", "model.peft.ila_ds_layers=[0]",
                                           "model.peft.ila_layers=[1, 2]"))
    with pytest.raises(ConfigError, match=r"model.peft.ila_layers: block indices \[2\] outside 0..1 of vit_tiny"):
        check_before_work(ila)
    assert check_before_work(load_config(None, tiny_overrides(tmp_path, "model.method=cnn",
                                                               "model.backbone=resnet18", "model.backbone_args={}"))) is None


def test_capabilities_are_protocols_the_models_answer():
    from fgir.methods.capabilities import Explains, HasExtraLoss, HasFrozenBackbone, SelectsRegions
    from fgir.models.glsim import GLSim, GLSimConfig
    from fgir.models.peft.linear_probe import build_linear

    glsim = GLSim(tiny_backbone(), 3, GLSimConfig(top_o=3))
    assert isinstance(glsim, Explains) and isinstance(glsim, SelectsRegions) and not isinstance(glsim, HasFrozenBackbone)
    images = torch.randn(2, 3, 32, 32)
    explanation = glsim.eval().explain(images)
    assert explanation.boxes.shape == (2, 4) and explanation.scores.shape == (2, 16) and explanation.selected == 3
    assert explanation.logits.shape == (2, 3) and explanation.crops.shape == images.shape

    linear = build_linear(tiny_backbone(), 3, model_config("linear"))
    assert isinstance(linear, HasFrozenBackbone) and not isinstance(linear, (Explains, HasExtraLoss))
    assert "backbone.vit.blocks.0.attn.qkv.weight" in linear.frozen_state_keys()
    assert not any(key.startswith("head.") for key in linear.frozen_state_keys())


TOY_MODULE = '''
"""A method from another package: a ViT whose logits are scaled by its own config key."""
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from fgir.config_fields import MethodSection
from fgir.methods import register_method
from fgir.models.heads import LinearHead


@dataclass
class ToyConfig(MethodSection):
    section: ClassVar[str] = "toy"
    POSITIVE: ClassVar[tuple[str, ...]] = ("scale",)

    scale: float = 1.0


class ScaledViT(nn.Module):
    def __init__(self, backbone, num_classes, model):
        super().__init__()
        self.backbone, self.scale = backbone, model.toy.scale
        self.head = LinearHead(backbone.embed_dim, num_classes, zero_init=model.zero_init_head)

    def forward(self, images):
        return self.scale * self.head(self.backbone.pool(self.backbone.forward_features(images)))


def register():
    register_method("toy_scaled_called", build=ScaledViT, config=ToyConfig)


register_method("toy_scaled", build=ScaledViT, config=ToyConfig)
'''


def install_toy_distribution(folder) -> None:
    """A distribution importlib.metadata finds on sys.path: a module and its entry points, one a module
    (registers on import) and one a callable."""
    (folder / "fgir_toy_method.py").write_text(TOY_MODULE)
    info = folder / "fgir_toy_method-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fgir-toy-method\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""\
        [fgir.methods]
        toy = fgir_toy_method
        toy_called = fgir_toy_method:register
        """))


def test_a_method_from_an_entry_point_trains_through_the_cli(tmp_path, monkeypatch, registry, capsys):
    plugin = tmp_path / "site"
    plugin.mkdir()
    install_toy_distribution(plugin)
    monkeypatch.syspath_prepend(str(plugin))
    importlib.invalidate_caches()
    monkeypatch.setattr(methods, "_loaded", False)  # the next lookup reads the entry points again
    monkeypatch.delitem(sys.modules, "fgir_toy_method", raising=False)

    overrides = tiny_overrides(tmp_path, "model.method=toy_scaled", "model.toy.scale=2.0", "train.epochs=1",
                               "train.run_name=toy")
    assert main(["train", *overrides, "--no-progress"]) == 0
    assert method_names()[-2:] == ["toy_scaled", "toy_scaled_called"]
    saved = yaml.safe_load((tmp_path / "runs" / "toy" / "config.yaml").read_text())
    assert saved["model"]["method"] == "toy_scaled" and saved["model"]["toy"] == {"scale": 2.0}
    assert (tmp_path / "runs" / "toy" / "checkpoints").is_dir()
    capsys.readouterr()
    assert main(["train", *tiny_overrides(tmp_path, "model.method=toy_scaled", "model.toy.scale=0"), "--no-progress"]) == 2
    assert "config key 'model.toy.scale' must be > 0, got 0" in one_error_line(capsys, "train")
