"""The reference ViT of the GLSim and ILA codebases (arkel23/GLSim and
arkel23/DownSamplingInterLayerAdapter, modules_others/transformer.py), written here from its parameter
names for the converter tests: random state_dicts in its naming, its forward on them, and release
files as its trainer saves them."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F

EPS = 1e-12  # the reference's layer_norm_eps (timm uses 1e-6: a ~1e-7 relative difference)


def randn(gen: torch.Generator, *shape: int, scale: float = 0.1) -> torch.Tensor:
    return torch.randn(*shape, generator=gen) * scale


def linear_state(prefix: str, d_in: int, d_out: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": randn(gen, d_out, d_in), f"{prefix}.bias": randn(gen, d_out)}


def norm_state(prefix: str, dim: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": 1 + randn(gen, dim), f"{prefix}.bias": randn(gen, dim)}


def block_state(prefix: str, dim: int, ff: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """One BlockVanilla: q/k/v and proj linears, two LayerNorms, the pwff MLP."""
    state = {}
    for name in ("attn.proj_q", "attn.proj_k", "attn.proj_v", "proj"):
        state.update(linear_state(f"{prefix}.{name}", dim, dim, gen))
    for name in ("norm1", "norm2"):
        state.update(norm_state(f"{prefix}.{name}", dim, gen))
    state.update(linear_state(f"{prefix}.pwff.fc1", dim, ff, gen))
    state.update(linear_state(f"{prefix}.pwff.fc2", ff, dim, gen))
    return state


def embedding_state(dim: int, patch: int, image: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Patch embedding, class token, learned position embedding, encoder norm."""
    tokens = (image // patch) ** 2 + 1
    return {
        "patch_embedding.weight": randn(gen, dim, 3, patch, patch),
        "patch_embedding.bias": randn(gen, dim),
        "class_token": randn(gen, 1, 1, dim, scale=1.0),
        "positional_embedding.pos_embedding": randn(gen, 1, tokens, dim, scale=1.0),
        **norm_state("encoder_norm", dim, gen),
    }


def write_release(path: Path, state: dict[str, torch.Tensor], args: argparse.Namespace) -> Path:
    """Like the reference trainers' save_model: the wrapper's state_dict has the `model.` prefix."""
    optimizer = {"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": [{"lr": 0.01, "params": [0]}]}
    torch.save(
        {
            "config": args,
            "epoch": 7,
            "model": {f"model.{k}": v for k, v in state.items()},
            "accuracy": 91.5,
            "optimizer": optimizer,
        },
        path,
    )
    return path


def linear(state: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, state[f"{name}.weight"], state[f"{name}.bias"])


def layer_norm(state: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], state[f"{name}.weight"], state[f"{name}.bias"], EPS)


def attention(state: dict, p: str, h: torch.Tensor, heads: int) -> torch.Tensor:
    b, s, d = h.shape
    q, k, v = (linear(state, f"{p}.attn.proj_{n}", h).view(b, s, heads, -1).transpose(1, 2) for n in "qkv")
    attn = (q @ k.transpose(-2, -1) / math.sqrt(d // heads)).softmax(-1)
    return linear(state, f"{p}.proj", (attn @ v).transpose(1, 2).reshape(b, s, d))


def mlp(state: dict, p: str, h: torch.Tensor) -> torch.Tensor:
    return linear(state, f"{p}.pwff.fc2", F.gelu(linear(state, f"{p}.pwff.fc1", h)))


def block(state: dict, p: str, x: torch.Tensor, heads: int) -> torch.Tensor:
    x = x + attention(state, p, layer_norm(state, f"{p}.norm1", x), heads)
    return x + mlp(state, p, layer_norm(state, f"{p}.norm2", x))


def embed(state: dict, images: torch.Tensor, patch: int) -> torch.Tensor:
    x = F.conv2d(images, state["patch_embedding.weight"], state["patch_embedding.bias"], stride=patch)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([state["class_token"].expand(x.shape[0], -1, -1), x], dim=1)
    return x + state["positional_embedding.pos_embedding"]
