"""Contracts every method keeps, checked on a tiny model of each (timm's tests/test_models.py and
peft's TEST_CASES are the models): forward shape, gradient census against the method's declared
trainable set, checkpoint round trip (adapter-only for frozen backbones), batch independence, one
optimiser step, explanation where the method offers one.

A new method needs one row in CASES: the overrides that make its model tiny, and what it trains
beyond the rule of its kind (a frozen backbone, or a fine-tuned one).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn
from torch.nn import functional as F

from conftest import TINY, TINY_VIT, all_methods, save_random_vit
from fgir import load_onnx
from fgir.config import Config, ModelConfig, load_config
from fgir.engine.checkpoint import restore_model, save_checkpoint
from fgir.methods import build_backbone, build_model, get_method
from fgir.methods.capabilities import HasFrozenBackbone
from fgir.models.backbone import Backbone
from fgir.models.layers.attention_capture import recorded_attention
from fgir.models.part_fusion import PartFusionClassifier
from fgir.models.peft.freezing import FrozenBackboneConfig
from fgir.tools.attention import last_layer_map, model_attention, rollout_map
from fgir.tools.explain import explanation_panels
from fgir.tools.onnx_export import export_onnx

CLASSES = ["a", "b", "c"]
SIZE = 32  # patch 8: a 4x4 grid
BATCH = 4


def build(config: ModelConfig) -> nn.Module:
    return build_model(config, len(CLASSES), SIZE)


def has_frozen_backbone(model: nn.Module) -> bool:
    """The capability a frozen-backbone method declares (its checkpoints are adapter-only)."""
    return isinstance(model, HasFrozenBackbone)


def never(name: str) -> bool:
    return False


def tiny_vit(weights: Path) -> tuple[str, ...]:
    """A 2-block ViT of width 32 on a "pretrained" file (see the `tiny` fixture)."""
    return ("model.backbone=vit_tiny_patch16_224", TINY_VIT, "model.pretrained=true", f"model.weights={weights}")


def tiny_resnet(weights: Path) -> tuple[str, ...]:
    """A ResNet-18 layout shrunk to one block per stage and 8..64 channels, random weights."""
    return ("model.backbone=resnet18", "model.pretrained=false",
            "model.backbone_args={layers: [1, 1, 1, 1], channels: [8, 16, 32, 64], stem_width: 8}")


@dataclass(frozen=True)
class Case:
    overrides: tuple[str, ...] = ()
    network: Callable[[Path], tuple[str, ...]] = tiny_vit
    # Pretrained backbone parameters (timm names inside the ViT) that the method trains although its
    # backbone is frozen, or freezes although it fine-tunes the backbone.
    trains: Callable[[str], bool] = never
    freezes: Callable[[str], bool] = never


ILA = ("model.peft.ila_ds_layers=[0]",)  # the default [3, 7] lies beyond the 2 tiny blocks
CASES = {
    "vit": Case(),
    "cnn": Case(network=tiny_resnet),
    # IFA reads every block's CLS token, never the final norm, which it freezes (fgir.models.ifa).
    "vit_ifa": Case(freezes=lambda name: name.startswith("norm.")),
    "glsim": Case(("model.glsim.top_o=4",)),
    "ila": Case(ILA),
    "ila_plus": Case(ILA),
    "ila_pp": Case(ILA),
    "linear": Case(),
    "adapter": Case(),
    "convpass": Case(),
    "vpt_shallow": Case(("model.peft.prompt_length=2",)),
    "vpt_deep": Case(("model.peft.prompt_length=2",)),
    "lora": Case(("model.peft.lora_rank=2",)),
    "bitfit": Case(trains=lambda name: name.endswith(".bias")),  # biases only: BitFit, arXiv 2106.10199
    "mpncov": Case(),
    "vqt": Case(),
    # The last block is replaced by the part-fusion block (and FFVT's final norm by its own): unused, frozen.
    "transfg": Case(freezes=lambda name: name.startswith("blocks.1.")),
    "ffvt": Case(freezes=lambda name: name.startswith(("blocks.1.", "norm."))),
    "ramstrans": Case(("model.ramstrans.top_k=4",)),
    "simtrans": Case(("model.simtrans.levels=2",), freezes=lambda name: name.startswith("blocks.1.")),
    # Logit scale 1, not CAL's 100: at 100 one step fits the batch and the loss underflows to 0.
    "cal": Case(("model.cal.attention_maps=4", "model.cal.logit_scale=1")),
    "cal_cnn": Case(("model.cal_cnn.attention_maps=4", "model.cal_cnn.logit_scale=1"), network=tiny_resnet),
}


class Tiny:
    """Configs and models of the tiny cases, each built once: building a timm model costs more
    than a test, so every test gets a deep copy."""

    def __init__(self, weights: Path):
        self.weights = weights
        self._configs: dict[tuple[str, ...], Config] = {}
        self._models: dict[tuple[str, ...], nn.Module] = {}

    def config(self, method: str, *extra: str) -> Config:
        key = (method, *extra)
        if key not in self._configs:
            case = CASES[method]
            self._configs[key] = load_config(None, [*case.network(self.weights), f"data.image_size={SIZE}",
                                                    f"model.method={method}", *case.overrides, *extra])
        return copy.deepcopy(self._configs[key])

    def model(self, method: str, *extra: str) -> nn.Module:
        key = (method, *extra)
        if key not in self._models:
            self._models[key] = build(self.config(method, *extra).model)
        return copy.deepcopy(self._models[key])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Tiny:
    """The tiny cases, on a random tiny ViT saved as the "pretrained" file model.weights points at."""
    path = tmp_path_factory.mktemp("pretrained") / "vit.safetensors"
    save_random_vit(path, img_size=SIZE, **TINY)
    return Tiny(path)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    return torch.randn(BATCH, 3, SIZE, SIZE, generator=generator), torch.arange(BATCH) % len(CLASSES)


def loss_of(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(3)  # the same dropout masks in every call
    return F.cross_entropy(model(images), labels)


def gradients(model: nn.Module) -> dict[str, torch.Tensor | None]:
    model.zero_grad(set_to_none=True)
    loss_of(model, *batch()).backward()
    return {name: parameter.grad for name, parameter in model.named_parameters()}


def randomize_zeros(model: nn.Module) -> set[str]:
    """Give random values to the trainable tensors that start all zero (a zero-initialised head,
    up-projections, LoRA's B): until they move, nothing behind them gets a gradient. Returns their
    names, found by value."""
    torch.manual_seed(1)
    zeros = set()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.requires_grad and not parameter.any():
                parameter.normal_(std=0.3)
                zeros.add(name)
    return zeros


@cache
def _plain_vit_names(backbone: str, backbone_args: str) -> frozenset[str]:
    config = ModelConfig(backbone=backbone, backbone_args=json.loads(backbone_args))
    return frozenset(name for name, _ in build_backbone(config, SIZE, pretrained=False).vit.named_parameters())


def pretrained_names(model: nn.Module, config: ModelConfig) -> dict[str, str]:
    """{model parameter name: its name in a plain timm ViT} for the parameters that are the
    backbone's own weights (LoRA's `.base_layer` removed); what a method adds is not among them.
    Found by name against a freshly built backbone, not by the model's own bookkeeping. Empty for
    a network without a ViT Backbone (cnn): all of it then counts as the method's own, and trains."""
    prefix = next((f"{name}.vit." for name, module in model.named_modules() if isinstance(module, Backbone)), None)
    if prefix is None:
        return {}
    plain = _plain_vit_names(config.backbone, json.dumps(config.backbone_args))
    names = {}
    for name, _ in model.named_parameters():
        timm_name = re.sub(r"\.base_layer(?=\.)", "", name.removeprefix(prefix))
        if name.startswith(prefix) and timm_name in plain:
            names[name] = timm_name
    return names


def trained_by_peft(timm_name: str, peft: FrozenBackboneConfig) -> bool:
    """The backbone parameters `model.peft` lets a frozen backbone train."""
    return ((timm_name == "cls_token" and peft.train_cls_token) or (timm_name == "pos_embed" and peft.train_pos_embed)
            or (timm_name.startswith("norm.") and peft.train_norm))


def section_of(method: str, config: ModelConfig):
    """The method's own config section (its frozen-backbone keys, where it has them), or None."""
    section = get_method(method).section
    return getattr(config, section) if section else None


def backbone_frozen(method: str, model: nn.Module, config: ModelConfig) -> bool:
    """The method declares a frozen backbone and, where it runs in both settings, is set to it."""
    return has_frozen_backbone(model) and getattr(section_of(method, config), "frozen", True)


def declared_trainable(method: str, model: nn.Module, config: ModelConfig) -> set[str]:
    """The parameters the method's rule says train: whatever it adds, and of the backbone's own
    weights all (fine-tuning) or those model.peft names (frozen), then the method's own exceptions."""
    case, pretrained = CASES[method], pretrained_names(model, config)
    flags = section_of(method, config)
    frozen = backbone_frozen(method, model, config)
    trainable = set()
    for name, _ in model.named_parameters():
        timm_name = pretrained.get(name)
        if timm_name is None:
            trains = True
        elif frozen:
            trains = trained_by_peft(timm_name, flags) or case.trains(timm_name)
        else:
            trains = not case.freezes(timm_name)
        if trains:
            trainable.add(name)
    return trainable


def perturbed(model: nn.Module) -> nn.Module:
    """Trainable tensors moved off their initial values and BatchNorm statistics updated, as
    training would leave them."""
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.1)
        model.train()(batch()[0])
    return model.eval()


def test_every_method_has_a_case():
    assert sorted(CASES) == sorted(all_methods())


@pytest.mark.parametrize("method", all_methods())
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_forward_gives_finite_logits_per_sample_and_class(tiny, method, mode):
    model = tiny.model(method).train(mode == "train")
    with torch.no_grad():
        logits = model(batch()[0])
    assert logits.shape == (BATCH, len(CLASSES)) and logits.isfinite().all()


PEFT_VARIANTS = {
    "default": (),
    "other_peft": ("model.peft.train_cls_token=false", "model.peft.train_pos_embed=true",
                   "model.peft.train_norm=true"),
}


def census_cases() -> list[tuple[str, str]]:
    """Every method with the default flags; those with a model.peft section also with the others."""
    return [(method, variant) for variant in PEFT_VARIANTS for method in all_methods()
            if variant == "default" or get_method(method).section == "peft"]


@pytest.mark.parametrize("method, variant", census_cases())
def test_gradient_census(tiny, method, variant):
    """Exactly the declared parameters train; each gets a finite, non-zero gradient once the
    all-zero tensors in front of it have moved, and the others get none at all."""
    config = tiny.config(method, *PEFT_VARIANTS[variant]).model
    model = tiny.model(method, *PEFT_VARIANTS[variant]).train()
    expected = declared_trainable(method, model, config)
    assert {name for name, p in model.named_parameters() if p.requires_grad} == expected
    at_init = gradients(model)
    assert {name for name, grad in at_init.items() if grad is not None} == expected
    assert all(at_init[name].isfinite().all() for name in expected)
    without_gradient = {name for name in expected if not at_init[name].any()}

    zeros = randomize_zeros(model)
    assert zeros or not without_gradient  # only an all-zero tensor may keep gradients away
    grads = gradients(model)
    assert {name for name, grad in grads.items() if grad is not None} == expected
    assert [name for name in expected if not grads[name].isfinite().all()] == []
    assert [name for name in expected if not grads[name].any()] == []


@pytest.mark.parametrize("method", all_methods())
def test_checkpoint_round_trip_is_bit_identical(tmp_path, tiny, method):
    config = tiny.config(method)
    model = perturbed(tiny.model(method))
    path = save_checkpoint(tmp_path / "best.safetensors", model, config, CLASSES, epoch=1, global_step=1)
    restored, _ = restore_model(path)
    images = batch()[0]
    with torch.no_grad():
        assert torch.equal(restored(images), model(images))
    restored_state = restored.state_dict()
    assert restored_state.keys() == model.state_dict().keys()
    assert [key for key, value in model.state_dict().items() if not torch.equal(restored_state[key], value)] == []

    with safe_open(str(path), framework="pt") as handle:
        stored = set(handle.keys())
    if not backbone_frozen(method, model, config.model) or not config.model.pretrained:
        assert stored == model.state_dict().keys()
        return
    # Adapter-only: everything but the frozen pretrained weights, which the weights file holds.
    frozen = set(pretrained_names(model, config.model)) - declared_trainable(method, model, config.model)
    assert stored == model.state_dict().keys() - frozen
    full = save_checkpoint(tmp_path / "full.safetensors", model, tiny.config(method, "model.pretrained=false"),
                           CLASSES, epoch=1, global_step=1)
    parameters = dict(model.named_parameters())
    frozen_bytes = sum(parameters[name].numel() * parameters[name].element_size() for name in frozen)
    assert path.stat().st_size <= full.stat().st_size - frozen_bytes


@pytest.mark.parametrize("method", all_methods())
def test_a_sample_gets_the_same_logits_alone_as_in_a_batch(tiny, method):
    model = perturbed(tiny.model(method))
    images = batch()[0]
    with torch.no_grad():
        together = model(images)
        alone = torch.cat([model(images[index:index + 1]) for index in range(BATCH)])
    torch.testing.assert_close(alone, together, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", all_methods())
def test_one_sgd_step_lowers_the_loss_on_its_batch(tiny, method):
    model = tiny.model(method).train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    images, labels = batch()
    loss = loss_of(model, images, labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        assert loss_of(model, images, labels) < loss


@pytest.mark.parametrize("method", all_methods())
def test_a_few_steps_from_the_built_start_reach_every_trainable_parameter(tiny, method):
    """Where a zero-initialised tensor (head, up-projection, LoRA's B) leaves the parameters behind
    it without a gradient at the start, its first steps open the way."""
    model = tiny.model(method).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.05, momentum=0.9)
    images, labels = batch()
    for _ in range(4):
        optimizer.zero_grad()
        loss_of(model, images, labels).backward()
        optimizer.step()
    names = {id(p): name for name, p in model.named_parameters()}
    assert [names[id(p)] for p in trainable if not p.grad.any()] == []


@pytest.mark.parametrize("method", all_methods())
def test_explanation(tiny, method):
    """What `fgir explain` shows for one image: GLSim's similarity map, box and crop where the method
    selects patches (GLSim, arXiv 2407.12891), and for any ViT the two attention maps."""
    model = perturbed(tiny.model(method))
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, Backbone):
        pytest.skip(f"{type(model).__name__} has no ViT backbone to explain")
    images = batch()[0]
    shown = images[0].permute(1, 2, 0).numpy()
    panels = {title.split(" (")[0]: (image, heat, box) for title, image, heat, box in
              explanation_panels(model, backbone, images[:1], shown)}
    for title in ("last-layer attention", "attention rollout"):
        heat = panels[title][1]
        assert heat.shape == (SIZE, SIZE) and heat.min() == 0 and heat.max() == pytest.approx(1)
    if not hasattr(model, "forward_details"):
        assert set(panels) == {"input", "last-layer attention", "attention rollout"}
        return
    with torch.no_grad():
        details = model.forward_details(images)
        torch.testing.assert_close(details.logits, model(images), rtol=0, atol=0)
    patches = backbone.grid_for(SIZE, SIZE)
    assert details.scores.shape == (BATCH, patches[0] * patches[1]) and details.scores.isfinite().all()
    # Every selected patch lies inside its image's box, and the box inside the image.
    rows, cols = details.indices // patches[1] * 8, details.indices % patches[1] * 8
    x0, y0, x1, y1 = details.boxes.unbind(-1)
    assert (0 <= x0).all() and (0 <= y0).all() and (x1 <= SIZE).all() and (y1 <= SIZE).all()
    assert ((cols >= x0[:, None]) & (cols + 8 <= x1[:, None]) & (rows >= y0[:, None]) & (rows + 8 <= y1[:, None])).all()
    assert details.crops.shape == images.shape
    box = panels["selected box"][2]
    assert box == tuple(int(v) for v in details.boxes[0].tolist())
    assert panels["crop"][0].shape == (box[3] - box[1], box[2] - box[0], 3)


def recorded_first_pass(model: nn.Module, backbone: Backbone, images: torch.Tensor) -> list[torch.Tensor]:
    """The attention of the model's first pass through the blocks, recorded from timm's attention
    path while the model runs. TransFG and FFVT run blocks 0..L-2 themselves (to keep the scores);
    for them the blocks are re-run here through timm's path on the model's own tokens."""
    if isinstance(model, PartFusionClassifier):
        tokens = backbone.embed(images)
        maps = []
        for block in backbone.blocks[:-1]:
            with recorded_attention(backbone) as recorded:
                tokens = block(tokens)
            maps += recorded
        return maps
    with recorded_attention(backbone) as recorded:
        model(images)
    return recorded[: backbone.num_blocks]


@pytest.mark.parametrize("method", all_methods())
def test_explained_attention_is_the_models_own(tiny, method):
    """The attention `fgir explain` and `fgir serve` draw is the one the model computes (its first
    pass through the backbone: adapters, prompts, queries and all), and each block's layout puts
    the patch grid on the trailing tokens it really occupies."""
    model = perturbed(tiny.model(method))
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, Backbone):
        pytest.skip(f"{type(model).__name__} has no ViT backbone to explain")
    images = batch()[0][:1]
    with torch.no_grad():
        own = recorded_first_pass(model, backbone, images)
        shown = model_attention(model, backbone, images)
    assert [block.weights.shape for block in shown] == [matrix.shape for matrix in own]
    for index, (block, expected) in enumerate(zip(shown, own, strict=True)):
        torch.testing.assert_close(block.weights, expected, rtol=0, atol=1e-6, msg=f"block {index}")
        tokens = block.weights.shape[-1]
        assert block.patch_start + block.grid[0] * block.grid[1] == tokens, f"block {index}: layout misses the patches"
    assert last_layer_map(shown).shape[1:] == shown[-1].grid
    assert rollout_map(shown).shape[1:] == shown[0].grid


@pytest.mark.parametrize("method", all_methods())
def test_exports_to_onnx_and_onnxruntime_gives_its_logits(tmp_path, tiny, method):
    """`fgir export onnx` on the method's checkpoint (adapter-only where frozen): onnxruntime's
    logits are PyTorch's within 1e-4, at batch sizes other than the traced one."""
    config = tiny.config(method)
    model = perturbed(tiny.model(method)).eval()
    path = save_checkpoint(tmp_path / "best.safetensors", model, config, CLASSES, epoch=1, global_step=1)
    report = export_onnx(path, tmp_path / "model.onnx")
    assert report.max_abs_diff <= 1e-4
    exported = load_onnx(str(tmp_path / "model.onnx")).model
    images = batch()[0]
    with torch.no_grad():
        for count in (1, 3):
            torch.testing.assert_close(exported(images[:count]), model(images[:count]), rtol=0, atol=1e-4)
