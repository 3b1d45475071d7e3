"""Shared fixtures: a tiny ViT and a tiny synthetic dataset so end-to-end tests run in seconds."""

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from PIL import Image

from fgir.config import load_config
from fgir.methods import method_names
from fgir.models.backbone import Backbone

TINY_VIT = "model.backbone_args={patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}"
TINY = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2)


def all_methods() -> list[str]:
    """Every method name `model.method` accepts; the tests that hold for every method run over these."""
    return method_names()


def photo(width=317, height=211) -> Image.Image:
    """Smooth gradients plus noise: bicubic and bilinear resampling give visibly different pixels."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) % 256], axis=-1)
    return Image.fromarray(np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8))


def tiny_backbone(**overrides) -> Backbone:
    """A 2-block ViT at 32 px in eval mode, with random values everywhere (timm starts norms at 1,
    biases and CLS near 0), so a skipped or misplaced step shows up in the outputs."""
    torch.manual_seed(0)
    backbone = Backbone.create("vit_tiny_patch16_224", pretrained=False, **{"img_size": 32, **TINY, **overrides})
    with torch.no_grad():
        for parameter in backbone.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.2)
    return backbone.eval()


def tiny_overrides(tmp_path, *extra: str) -> list[str]:
    return [
        "model.backbone=vit_tiny_patch16_224",
        "model.pretrained=false",
        TINY_VIT,
        "data.format=synthetic",
        f"data.root={tmp_path / 'synthetic'}",
        "data.synthetic.num_classes=3",
        "data.synthetic.train_per_class=6",
        "data.synthetic.val_per_class=2",
        "data.synthetic.test_per_class=3",
        "data.synthetic.image_size=40",
        "data.image_size=32",
        "data.resize_ratio=1.125",
        "data.batch_size=4",
        "data.eval_batch_size=8",
        "data.num_workers=0",
        "train.epochs=2",
        "train.warmup_steps=2",
        "train.lr=0.01",
        "train.tensorboard=false",
        f"train.output_dir={tmp_path / 'runs'}",
        *extra,
    ]


@pytest.fixture
def tiny_config(tmp_path):
    def make(*extra: str):
        return load_config(None, tiny_overrides(tmp_path, *extra))

    return make


@pytest.fixture(autouse=True)
def _two_threads():
    # Bit-identity checks (resume, batch independence) need the same thread count in every run.
    torch.set_num_threads(2)


def tinted_batch(size: int = 6, classes: int = 3, image_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable batch: noise images whose class tints one colour channel."""
    labels = torch.arange(size) % classes
    images = torch.randn(size, 3, image_size, image_size) + torch.nn.functional.one_hot(labels, 3).float()[:, :, None, None]
    return images, labels


def fit_steps(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int,
              optimizer: torch.optim.Optimizer) -> list[float]:
    """Train `model` on one batch for `steps` steps; the loss of each step."""
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


class AotEagerCompiler:
    """Stands in for `compile_model` where a module imported it: records each call's `frozen_weights`
    and compiles through dynamo with the aot_eager backend (no minutes of C++ compilation)."""

    def __init__(self):
        self.frozen_weights: list[bool] = []

    def __call__(self, model, frozen_weights=False):
        from fgir.engine.acceleration import compile_model

        self.frozen_weights.append(frozen_weights)
        return compile_model(model, backend="aot_eager")


def save_random_vit(path, seed: int = 0, name: str = "vit_tiny_patch16_224", img_size: int = 32, **model_args):
    """A random timm ViT's headless state dict saved as the "pretrained" file a user points
    model.weights at (another seed: another backbone); returns the state dict."""
    torch.manual_seed(seed)
    state = timm.create_model(name, pretrained=False, num_classes=0, img_size=img_size, **model_args).state_dict()
    safetensors.torch.save_file(state, str(path))
    return state
