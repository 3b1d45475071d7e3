"""Layer-to-layer similarity of a ViT by centered kernel alignment (Kornblith et al., 2019), the
analysis of the ILA paper (arXiv:2409.11051): with a frozen ViT on ultra-fine-grained data the attention
of the later layers collapses (CKA ~0.95-1.0 between them); ILA makes them diverse again.

For n images, layer l gives a representation X_l (n, p_l) and a Gram matrix K_l (n, n): X_l X_l^T
(linear) or an RBF kernel. With K' = H K H (H = I - 11^T/n, centering),
CKA(K, L) = <K', L'>_F / (||K'||_F ||L'||_F), in [0, 1], invariant to orthogonal transforms and
isotropic scaling of either representation. Working with Grams lets layers differ in width (ILA's
down-sampled layers have fewer tokens, hence smaller attention maps).

Representations, one per block, recorded by hooks while the whole model (method and all) runs:
`cls` (the first token after the block), `mean` (mean of the tokens after the prefix tokens) or
`attention` (the block's softmax attention averaged over heads, flattened: T*T values per image).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from fgir.config import YAML_SUFFIXES, DataConfig, load_config
from fgir.data import build_transform
from fgir.engine.checkpoint import restore_model
from fgir.engine.device import resolve_device
from fgir.fileio import atomic_write_csv
from fgir.methods import build_model
from fgir.models.backbone import Backbone
from fgir.models.layers.attention_capture import recorded_attention
from fgir.recipes import is_recipe_name
from fgir.tools.plots import save_figure
from fgir.tools.predictor import expand_inputs, open_image

REPRESENTATIONS = ("cls", "mean", "attention")
KERNELS = ("linear", "rbf")


def gram_linear(features: torch.Tensor) -> torch.Tensor:
    """(n, p) -> (n, n) inner products, in float64."""
    x = features.reshape(features.shape[0], -1).double()
    return x @ x.T


def gram_rbf(features: torch.Tensor, bandwidth: float = 0.5) -> torch.Tensor:
    """(n, p) -> (n, n) Gaussian kernel exp(-d^2 / (2 s^2)) with s = `bandwidth` x the median pairwise
    distance, so the kernel (and CKA) does not change when the features are scaled."""
    x = features.reshape(features.shape[0], -1).double()
    squared = torch.cdist(x, x).square()
    off_diagonal = squared[~torch.eye(len(x), dtype=torch.bool, device=x.device)]
    median = off_diagonal.median().clamp(min=torch.finfo(torch.float64).tiny)
    return torch.exp(-squared / (2 * bandwidth**2 * median))


def center_gram(gram: torch.Tensor) -> torch.Tensor:
    """H K H without forming H: subtract row and column means, add back the overall mean."""
    return gram - gram.mean(0, keepdim=True) - gram.mean(1, keepdim=True) + gram.mean()


def cka_matrix(grams: list[torch.Tensor]) -> torch.Tensor:
    """(L, L) CKA between every pair of the given (n, n) Gram matrices."""
    flat = []
    for index, gram in enumerate(grams):
        centered = center_gram(gram).flatten()
        norm = centered.norm()
        if norm == 0:
            raise ValueError(f"representation {index} is the same for every image: CKA is undefined")
        flat.append(centered / norm)
    stacked = torch.stack(flat)
    return (stacked @ stacked.T).clamp(-1.0, 1.0)


def cka(x: torch.Tensor, y: torch.Tensor, kernel: str = "linear") -> float:
    """CKA between two representations of the same n images, (n, p) and (n, q)."""
    gram = _gram_fn(kernel)
    return float(cka_matrix([gram(x), gram(y)])[0, 1])


def layer_representations(model: nn.Module, images: torch.Tensor, representation: str = "cls") -> list[torch.Tensor]:
    """One (B, p) representation per block of the model's backbone, from one forward pass of `model`
    (eval mode, no gradients) on a batch of transformed images."""
    if representation not in REPRESENTATIONS:
        raise ValueError(f"representation must be one of {', '.join(REPRESENTATIONS)}, got '{representation}'")
    backbone = backbone_of(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if representation == "attention":
                with recorded_attention(backbone) as maps:
                    model(images)
                outputs = [m.mean(1).flatten(1) for m in maps]
            else:
                outputs = _block_outputs(model, backbone, images, representation)
    finally:
        model.train(was_training)
    if len(outputs) != backbone.num_blocks:
        raise RuntimeError(f"{type(model).__name__} ran {len(outputs)} blocks for one forward pass, expected "
                           f"{backbone.num_blocks}: its representations cannot be assigned to layers")
    return [o.float().cpu() for o in outputs]


def _block_outputs(model: nn.Module, backbone: Backbone, images: torch.Tensor, representation: str) -> list[torch.Tensor]:
    outputs: list[torch.Tensor] = []
    prefix = backbone.num_prefix_tokens

    def record(_module, _args, tokens: torch.Tensor) -> None:
        outputs.append(tokens[:, 0] if representation == "cls" else tokens[:, prefix:].mean(1))

    handles = [block.register_forward_hook(record) for block in backbone.blocks]
    try:
        model(images)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def model_cka(model: nn.Module, images: torch.Tensor | Iterable[torch.Tensor], representation: str = "cls",
              kernel: str = "linear") -> torch.Tensor:
    """(L, L) CKA between the blocks of `model` over all `images`: one (n, C, H, W) tensor or an
    iterable of batches (representations are gathered over batches before the Grams are formed)."""
    gram = _gram_fn(kernel)
    batches = [images] if isinstance(images, torch.Tensor) else images
    per_layer: list[list[torch.Tensor]] = []
    for batch in batches:
        for index, features in enumerate(layer_representations(model, batch, representation)):
            if index == len(per_layer):
                per_layer.append([])
            per_layer[index].append(features)
    if not per_layer or sum(len(f) for f in per_layer[0]) < 2:
        raise ValueError("CKA compares images with each other: give at least 2 images")
    return cka_matrix([gram(torch.cat(features)) for features in per_layer])


def plot_cka(matrices: dict[str, torch.Tensor], path: str | os.PathLike, title: str = "") -> Path:
    """Heat maps of (L, L) CKA matrices side by side (e.g. frozen ViT vs ILA), layer 1 at the bottom
    left as in the paper, one shared colour scale over [0, 1]."""
    if not matrices:
        raise ValueError("no CKA matrix to plot")
    figure = Figure(figsize=(4.2 * len(matrices) + 0.8, 4))
    axes_list = figure.subplots(1, len(matrices), squeeze=False)[0]
    image = None
    for axes, (name, matrix) in zip(axes_list, matrices.items(), strict=True):
        values = np.asarray(matrix, dtype=np.float64)
        layers = np.arange(1, len(values) + 1)
        image = axes.imshow(values, cmap="magma", vmin=0.0, vmax=1.0, origin="lower", interpolation="nearest",
                            extent=(0.5, len(values) + 0.5, 0.5, len(values) + 0.5))
        axes.set_xticks(layers)
        axes.set_yticks(layers)
        axes.set_xlabel("layer")
        axes.set_ylabel("layer")
        axes.set_title(name)
    figure.colorbar(image, ax=list(axes_list), fraction=0.046, pad=0.04, label="CKA")
    if title:
        figure.suptitle(title)
    return save_figure(figure, path)


def is_recipe(source: str | os.PathLike) -> bool:
    """A YAML file or a recipe name (`cub/ila`), not a checkpoint or run directory."""
    return Path(source).suffix in YAML_SUFFIXES or (not Path(source).exists() and is_recipe_name(str(source)))


def load_for_analysis(source: str | os.PathLike, device: torch.device, overrides: Iterable[str] = (),
                      weights: str | os.PathLike | None = None) -> tuple[nn.Module, DataConfig]:
    """A trained model from a checkpoint file or run directory, or an untrained one (pretrained
    backbone, new modules as initialised) from a recipe (a name or YAML file) with `key=value`
    overrides: the paper compares a frozen ViT with ILA this way. `weights`: the backbone weights of an adapter-only
    checkpoint (see `restore_model`); recipes take model.weights among their overrides."""
    if is_recipe(source):
        config = load_config(source, list(overrides))
        # The head plays no part in the layers' representations; any class count builds the model.
        model = build_model(config.model, config.data.num_classes or 2, config.data.image_size)
        return model.to(device).eval(), config.data
    if overrides:
        raise ValueError("key=value overrides apply to a YAML recipe, not to a checkpoint")
    model, checkpoint = restore_model(source, device, weights=weights)
    return model, checkpoint.config.data


PathInput = str | os.PathLike


def analyze_cka(sources: PathInput | list[PathInput], images: PathInput | Iterable[PathInput], out: PathInput,
                representation: str = "attention", kernel: str = "linear", batch_size: int = 16,
                device: str = "auto", overrides: Iterable[str] = (),
                weights: PathInput | None = None) -> tuple[dict[str, torch.Tensor], Path]:
    """`fgir analyze cka`: the (L, L) CKA matrix of each model (checkpoint, run directory or YAML
    recipe; several are drawn side by side, e.g. a frozen ViT and ILA) over the same images (files or
    folders, each read with that model's test transform). Writes the heat map `out` (e.g. cka.png)
    and a CSV beside it (same stem: source, layer, one column per layer). `overrides` apply to the
    YAML recipes, `weights` (the backbone weights of adapter-only checkpoints) to the checkpoints."""
    sources = [sources] if isinstance(sources, str | os.PathLike) else list(sources)
    overrides = list(overrides)
    if overrides and not any(is_recipe(source) for source in sources):
        raise ValueError("key=value overrides apply to a YAML recipe, not to a checkpoint")
    torch_device = resolve_device(device)
    items = [item for _, item in expand_inputs(images)]
    matrices: dict[str, torch.Tensor] = {}
    for source in sources:
        model, data = load_for_analysis(source, torch_device, overrides if is_recipe(source) else (), weights)
        transform = build_transform(data, train=False)
        batches = (torch.stack([transform(open_image(item, data.max_image_pixels)) for item in items[start:start + batch_size]])
                   .to(torch_device) for start in range(0, len(items), batch_size))
        matrices[str(source)] = model_cka(model, batches, representation, kernel)
    out = Path(out)
    width = max(len(matrix) for matrix in matrices.values())
    atomic_write_csv(out.with_suffix(".csv"), ["source", "layer", *range(1, width + 1)],
                     [[name, i + 1, *(f"{v:.6f}" for v in row)]
                      for name, matrix in matrices.items() for i, row in enumerate(matrix.tolist())])
    title = f"{kernel} CKA of {representation}, {len(items)} images"
    return matrices, plot_cka(matrices, out, title=title)


def backbone_of(model: nn.Module) -> Backbone:
    """The model itself if it is a Backbone, otherwise its one Backbone sub-module."""
    if isinstance(model, Backbone):
        return model
    found = [module for module in model.modules() if isinstance(module, Backbone)]
    if len(found) != 1:
        raise TypeError(f"{type(model).__name__} holds {len(found)} ViT backbones; CKA needs exactly one")
    return found[0]


def _gram_fn(kernel: str):
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got '{kernel}'")
    return gram_linear if kernel == "linear" else gram_rbf
