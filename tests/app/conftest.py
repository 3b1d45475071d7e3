"""Tiny saved checkpoints (GLSim and a plain ViT) whose dataset is not on disk, a picture, and a free
port on loopback."""

import dataclasses
import socket

import numpy as np
import pytest
import torch
from PIL import Image

from fgir.config import Config, DataConfig, model_config
from fgir.engine.checkpoint import save_checkpoint
from fgir.methods import build_model
from fgir.models.glsim import GLSimConfig

# Six classes so that the top 5 leaves one out; names as users see them, parentheses and unicode too.
CLASS_NAMES = ["Hatsune Miku", "Akemi Homura", "Edelgard von Hresvelgr (Fire Emblem)", "Saber (Fate)",
               "Rem (Re:Zero)", "Yūki Asuna (Sword Art Online)"]


def tiny_config(method: str, root) -> Config:
    data = DataConfig(name="toy", format="csv", root=str(root), num_classes=len(CLASS_NAMES), image_size=32,
                      resize_ratio=1.25)
    own = {"glsim": GLSimConfig(top_o=4)} if method == "glsim" else {}
    model = model_config(method, backbone="vit_tiny_patch16_224", pretrained=False,
                         backbone_args={"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}, **own)
    return Config(data=data, model=model)


def save_tiny_checkpoint(folder, method: str, data: DataConfig | None = None):
    """A checkpoint of a random tiny model; its dataset root does not exist unless `data` is given.
    Returns (path, model)."""
    config = tiny_config(method, folder / "no-such-dataset")
    if data is not None:
        config = dataclasses.replace(config, data=data)
    torch.manual_seed(0)
    model = build_model(config.model, len(CLASS_NAMES), config.data.image_size, pretrained=False).eval()
    with torch.no_grad():
        for parameter in model.parameters():  # zero-initialised heads would predict uniformly
            parameter.add_(torch.randn_like(parameter) * 0.5)
    path = save_checkpoint(folder / f"{method}.safetensors", model, config, CLASS_NAMES, epoch=1, global_step=1)
    return path, model


@pytest.fixture
def glsim_checkpoint(tmp_path):
    return save_tiny_checkpoint(tmp_path, "glsim")


@pytest.fixture
def vit_checkpoint(tmp_path):
    return save_tiny_checkpoint(tmp_path, "vit")


@pytest.fixture
def picture(tmp_path):
    """A 48 x 40 noise PNG."""
    path = tmp_path / "picture.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
