"""Each paper recipe family trains with its reference's arithmetic, checked against the reference's
own building blocks rather than fgir's: every step's lr against timm's CosineLRScheduler configured
and driven as the GLSim / ILA trainers do it (Animesion: its warm-up cosine LambdaLR), the
stochastic-depth rate of every block of the built model, and the test pixels against torchvision's
PIL pipeline with the reference's resize arithmetic."""

import math

import pytest
import torch
from test_reference_schedule import fgir_lrs, reference_lrs
from timm.layers import DropPath
from torchvision import transforms as reference
from torchvision.transforms import v2

from conftest import photo
from fgir.config import TrainConfig, load_config
from fgir.data.transforms import build_transform
from fgir.methods import build_model

# The reference trainers' defaults (GLSim and ILA `build_args.py`): warm-up from 1e-6 over 500
# steps, cosine to 1e-5; the lr each README's command passes.
REFERENCE_SCHEDULE = dict(warmup_steps=500, warmup_lr=1e-6, min_lr=1e-5)
GLSIM_LR, ILA_LR = 0.01, 0.1
STEPS_PER_EPOCH = 749  # CUB's 5,994 train_val images at batch 8, the last partial batch dropped

# recipe -> (lr, stochastic depth, resize side before the centre crop, or None: straight to size)
REFERENCE_RECIPES = {
    "cub/glsim": (GLSIM_LR, 0.1, int(224 * 1.34)),
    "cub/glsim_448": (GLSIM_LR, 0.1, int(448 * 1.34)),
    "cars/vit": (GLSIM_LR, 0.1, int(224 / 0.875)),  # the GLSim reference's Cars resize
    "soylocal/ila_448": (ILA_LR, 0.0, int(448 * 1.34)),
    "soyageing_r1/ila_pp_448": (ILA_LR, 0.0, int(448 * 1.34)),
    "cotton/lora_448": (ILA_LR, 0.0, int(448 * 1.34)),  # a PEFT baseline: ILA's recipe
}
ANIMESION = "dafre_faces/animesion_vit_b16_ifa"


def animesion_lrs(total: int, lr: float = 1e-3, warmup: int = 1000) -> list[float]:
    """The Animesion trainer (arXiv 2101.08674): a LambdaLR of linear warm-up from 0 then a cosine to 0
    over the steps after it, stepped after each optimizer step."""
    def factor(step: int) -> float:
        if step < warmup:
            return step / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))

    optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    seen = []
    for _ in range(total):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def largest_gap(got: list[float], expected: list[float]) -> float:
    return max(abs(a - b) for a, b in zip(got, expected, strict=True))


@pytest.mark.parametrize("name", REFERENCE_RECIPES)
def test_every_step_of_a_glsim_or_ila_recipe_runs_at_the_reference_lr(name):
    train = load_config(name).train
    total = train.epochs * STEPS_PER_EPOCH
    oracle = TrainConfig(lr=REFERENCE_RECIPES[name][0], **REFERENCE_SCHEDULE)
    assert largest_gap(fgir_lrs(train, total), reference_lrs(oracle, total)) <= 1e-12


def test_every_step_of_the_animesion_recipe_runs_at_its_reference_lr():
    train = load_config(ANIMESION).train
    total = train.epochs * 200
    assert largest_gap(fgir_lrs(train, total), animesion_lrs(total)) <= 1e-12
    assert (train.nesterov, train.weight_decay, train.grad_clip, train.precision) == (False, 0.0, 0.0, "fp32")


def drop_path_rates(name: str) -> dict[str, float]:
    """The stochastic-depth rate of every residual branch of the recipe's model (a narrow random ViT of
    ViT-B's 12 blocks, where ILA's adapters sit after blocks 3 and 7)."""
    narrow = "model.backbone_args={patch_size: 8, embed_dim: 32, depth: 12, num_heads: 2}"
    config = load_config(name, ["model.pretrained=false", narrow])
    model = build_model(config.model, num_classes=3, image_size=32)
    return {path: module.drop_prob if isinstance(module, DropPath) else 0.0
            for path, module in model.named_modules() if path.rsplit(".", 1)[-1].startswith("drop_path")}


@pytest.mark.parametrize("name", [*REFERENCE_RECIPES, ANIMESION])
def test_every_block_drops_paths_at_the_recipes_one_rate(name):
    rates = drop_path_rates(name)
    rate = REFERENCE_RECIPES[name][1] if name in REFERENCE_RECIPES else 0.0
    assert len(rates) >= 24 and set(rates.values()) == {rate}  # 12 encoder blocks x 2 branches at least
    if "glsim" in name:
        assert {"aggregator.block.drop_path1", "aggregator.block.drop_path2"} <= set(rates)


def reference_test_pixels(name: str) -> torch.Tensor:
    data = load_config(name).data
    side = REFERENCE_RECIPES.get(name, (None, None, None))[2]
    if side is None:  # Animesion: torchvision's default resampling (bilinear) straight to the size
        steps = [reference.Resize((data.image_size, data.image_size))]
    else:
        steps = [reference.Resize((side, side), interpolation=reference.InterpolationMode.BICUBIC),
                 reference.CenterCrop(data.image_size)]
    return reference.Compose([*steps, reference.ToTensor(), reference.Normalize(data.mean, data.std)])(photo())


@pytest.mark.parametrize("name", [*REFERENCE_RECIPES, ANIMESION])
def test_a_recipes_test_pixels_are_its_references(name):
    ours = build_transform(load_config(name).data, train=False)(photo())
    torch.testing.assert_close(ours, reference_test_pixels(name), rtol=0, atol=1e-6)


def test_the_medium_recipes_erase_the_references_boxes():
    # GLSim's medaugs: re 0.3; both references' RandomErasing(p=re, scale=(0.02, re_sh=0.4), ratio=(re_r1=0.3, 3.3)).
    steps = build_transform(load_config("cub/glsim").data, train=True).transforms
    (erasing,) = [step for step in steps if isinstance(step, v2.RandomErasing)]
    assert (erasing.p, tuple(erasing.scale), tuple(erasing.ratio)) == (0.3, (0.02, 0.4), (0.3, 3.3))
