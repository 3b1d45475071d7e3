"""Why a state dict does not fit a model, in a few lines instead of torch's wall of text: how many
keys are missing, unexpected or of another shape (the first few of each), what a ViT's tensors say
it is (width, depth, patch size, position grid), and which timm models have exactly those shapes."""

from __future__ import annotations

import difflib
import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import timm
import torch

SHOWN = 3  # keys named per kind; the rest are counted
# A ViT checkpoint's position embedding may hold another grid: timm resamples it to the image size.
RESAMPLED = ("pos_embed",)


@dataclass(frozen=True)
class StateMismatch:
    """The keys of a state dict (`given`, e.g. a file) that do not fit the keys of a model."""

    missing: list[str] = field(default_factory=list)  # the model has them, the state dict not
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @classmethod
    def between(cls, model_state: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> StateMismatch:
        # In state-dict order (embeddings, then block by block), which reads as the model is built.
        mismatched = [(key, tuple(given[key].shape), tuple(value.shape)) for key, value in model_state.items()
                      if key in given and tuple(given[key].shape) != tuple(value.shape)]
        return cls([key for key in model_state if key not in given], [key for key in given if key not in model_state],
                   mismatched)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.mismatched)

    def counts(self) -> str:
        return (f"{len(self.missing)} missing, {len(self.unexpected)} unexpected and "
                f"{len(self.mismatched)} mismatched keys")

    def lines(self, given: str = "file") -> list[str]:
        """One line per kind that occurs, naming its first keys; `given` names the state dict's side."""
        shapes = [f"{key} ({given} {a}, model {b})" for key, a, b in self.mismatched]
        kinds = (("missing", self.missing), ("unexpected", self.unexpected), ("other shape", shapes))
        return [f"{kind}: {_first(items)}" for kind, items in kinds if items]


def _first(items: list[str]) -> str:
    more = len(items) - SHOWN
    return ", ".join(items[:SHOWN]) + (f" and {more} more" if more > 0 else "")


@dataclass(frozen=True)
class ViTLayout:
    """What a timm-layout ViT state dict's tensor shapes say about the model it came from. The head
    count is not among them: attention weights have the same shapes for any divisor of the width."""

    embed_dim: int
    depth: int
    patch_size: tuple[int, int]
    mlp_ratio: float | None
    class_token: bool
    reg_tokens: int
    grid: tuple[int, int] | None  # of the position embedding, if it is square
    prefix: str = field(default="", compare=False)  # before timm's key names, e.g. 'backbone.vit.'

    def describe(self) -> str:
        parts = [f"width {self.embed_dim}", f"depth {self.depth}", "patch " + "x".join(map(str, self.patch_size))]
        if self.mlp_ratio is not None:
            parts.append(f"MLP ratio {self.mlp_ratio:g}")
        parts.append("a CLS token" if self.class_token else "no CLS token")
        if self.reg_tokens:
            parts.append(f"{self.reg_tokens} register tokens")
        if self.grid is not None:
            rows, cols = self.grid
            size = "x".join(str(g * p) for g, p in zip(self.grid, self.patch_size, strict=True))
            parts.append(f"a {rows}x{cols} position grid ({size} px images)")
        return "a ViT of " + ", ".join(parts)

    def backbone_args(self) -> str:
        """The `model.backbone_args` that rebuild these shapes; the head count must come from elsewhere."""
        args = [f"patch_size: {self.patch_size[0]}", f"embed_dim: {self.embed_dim}", f"depth: {self.depth}"]
        if self.mlp_ratio is not None and self.mlp_ratio != 4:
            args.append(f"mlp_ratio: {self.mlp_ratio:g}")
        if not self.class_token:
            args.append("class_token: false")
        if self.reg_tokens:
            args.append(f"reg_tokens: {self.reg_tokens}")
        return "{" + ", ".join(args + ["num_heads: H"]) + "}"


def vit_layout(state: Mapping[str, torch.Tensor]) -> ViTLayout | None:
    """The layout of a ViT state dict in timm's naming, under any key prefix (e.g. an fgir checkpoint's
    `backbone.vit.`); None when it holds no patch embedding."""
    projection = next((key for key in state if key.endswith("patch_embed.proj.weight")), None)
    if projection is None or state[projection].ndim != 4:
        return None
    prefix = projection.removesuffix("patch_embed.proj.weight")
    width, _, *patch = state[projection].shape
    blocks = {int(m.group(1)) for key in state if (m := re.match(rf"{re.escape(prefix)}blocks\.(\d+)\.", key))}
    fc1 = next((value for key, value in state.items()
                if re.fullmatch(rf"{re.escape(prefix)}blocks\.0\.mlp\.fc1(\.base_layer)?\.weight", key)), None)
    class_token = f"{prefix}cls_token" in state
    register = state.get(f"{prefix}reg_token")
    reg_tokens = register.shape[1] if register is not None else 0
    position = state.get(f"{prefix}pos_embed")
    grid = None
    if position is not None:
        # timm's no_embed_class models hold positions for the patches only.
        for tokens in (position.shape[1] - class_token - reg_tokens, position.shape[1]):
            side = math.isqrt(max(tokens, 0))
            if side and side * side == tokens:
                grid = (side, side)
                break
    return ViTLayout(embed_dim=width, depth=max(blocks) + 1 if blocks else 0, patch_size=tuple(patch),
                     mlp_ratio=fc1.shape[0] / width if fc1 is not None else None, class_token=class_token,
                     reg_tokens=reg_tokens, grid=grid, prefix=prefix)


def timm_models_with_shapes(state: Mapping[str, torch.Tensor], family: str, like: str,
                            patch_size: int | None = None) -> list[str]:
    """timm models of the module `family` (e.g. 'vision_transformer') whose headless state dict has
    exactly the keys and shapes of `state` (its classifier aside; position embeddings compared by
    width, as timm resamples their grid), best first: the same position grid, then the name closest to
    `like`. Candidates are built on the meta device (no memory, no init), first with one block, which
    rules most out in a fraction of the time; `patch_size` skips names that state another patch size."""
    candidates = timm.list_models(module=family)
    if patch_size is not None:
        candidates = [name for name in candidates
                      if re.search(rf"patch{patch_size}(?!\d)", name) or not re.search(r"patch\d", name)]
    fitting: list[tuple[bool, float, str]] = []
    for name in candidates:
        heads = getattr(timm.models.get_pretrained_cfg(name), "classifier", None) or "head"
        heads = (heads,) if isinstance(heads, str) else tuple(heads)
        own = {key: tuple(v.shape) for key, v in state.items() if not key.startswith(tuple(f"{h}." for h in heads))}
        shallow = _headless_shapes(name, depth=1)
        if shallow is not None and not _same_shapes(_first_block(own), _first_block(shallow)):
            continue
        shapes = _headless_shapes(name)
        if shapes is None or not _same_shapes(own, shapes):
            continue
        same_grid = all(own[key] == shapes[key] for key in RESAMPLED if key in own)
        fitting.append((same_grid, difflib.SequenceMatcher(None, name, like).ratio(), name))
    return [name for *_, name in sorted(fitting, reverse=True)]


def _same_shapes(given: Mapping[str, tuple[int, ...]], model: Mapping[str, tuple[int, ...]]) -> bool:
    return given.keys() == model.keys() and all(
        given[key][-1:] == model[key][-1:] if key in RESAMPLED else given[key] == model[key] for key in given)


def _first_block(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    return {key: shape for key, shape in shapes.items() if not key.startswith("blocks.") or key.startswith("blocks.0.")}


@functools.cache
def _headless_shapes(name: str, **model_args: int) -> dict[str, tuple[int, ...]] | None:
    with torch.device("meta"):
        for extra in ({"weight_init": "skip"}, {}):  # timm ViTs skip their (slow on meta) init
            try:
                model = timm.create_model(name, pretrained=False, num_classes=0, **model_args, **extra)
            except Exception:  # noqa: BLE001 - a model that cannot be built so is no candidate
                continue
            return {key: tuple(value.shape) for key, value in model.state_dict().items()}
    return None
