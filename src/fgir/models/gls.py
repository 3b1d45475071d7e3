"""Global-local similarity (GLS) selection math for GLSim (spec/glsim.md): score the patches against
the global token, turn the top-scoring patches into a pixel box, crop and resize the whole batch at once.
GLSim runs the scoring and the box under no_grad; the crop stays differentiable in the image values."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fgir.errors import ConfigError
from fgir.models.backbone import Backbone

SIMILARITIES = ("cosine", "l1", "l2")
BOX_MODES = ("inclusive", "reference")


def gls_scores(global_token: torch.Tensor, patch_tokens: torch.Tensor, similarity: str) -> torch.Tensor:
    """(B, D) global and (B, N, D) patch tokens -> (B, N) scores, higher = more similar. Distances
    (l1, l2) are negated so that the smallest distance scores highest and top-k works for all kinds."""
    global_token = global_token.unsqueeze(1)
    if similarity == "cosine":
        return F.cosine_similarity(global_token, patch_tokens, dim=-1)
    if similarity == "l1":
        return -(patch_tokens - global_token).abs().sum(-1)
    if similarity == "l2":
        return -(patch_tokens - global_token).norm(dim=-1)
    raise ValueError(f"unknown GLS similarity '{similarity}' (known: {', '.join(SIMILARITIES)})")


def boxes_from_indices(
    indices: torch.Tensor,
    grid: tuple[int, int],
    patch: tuple[int, int],
    image_size: tuple[int, int],
    mode: str,
) -> torch.Tensor:
    """(B, O) row-major patch indices -> (B, 4) integer pixel boxes x0, y0, x1, y1 (x1, y1 exclusive)
    around the selected patches. 'inclusive' covers the last selected row/column of patches;
    'reference' reproduces the paper code, which stops at the START of the last row/column
    (at least one patch wide), so its released checkpoints see the crops they were trained on."""
    if mode not in BOX_MODES:
        raise ValueError(f"unknown GLS box mode '{mode}' (known: {', '.join(BOX_MODES)})")
    grid_w = grid[1]
    rows, cols = indices // grid_w, indices % grid_w
    (patch_h, patch_w), (height, width) = patch, image_size
    y0, x0 = rows.amin(1) * patch_h, cols.amin(1) * patch_w
    if mode == "inclusive":
        y1, x1 = (rows.amax(1) + 1) * patch_h, (cols.amax(1) + 1) * patch_w
    else:
        y1 = torch.maximum(rows.amax(1) * patch_h, y0 + patch_h)
        x1 = torch.maximum(cols.amax(1) * patch_w, x0 + patch_w)
    return torch.stack([x0, y0, x1.clamp(max=width), y1.clamp(max=height)], dim=1)


def _bilinear_taps(
    start: torch.Tensor, end: torch.Tensor, size: int, align_corners: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B,) crop bounds -> the pixel pairs and weights, each (B, size), that F.interpolate(bilinear)
    blends when resizing the crop to `size`. align_corners=False: half-pixel centres clamped to the
    crop, so its edge pixels repeat instead of blending with the pixels outside the crop;
    align_corners=True: first and last output pixels sit on the crop's first and last pixels.
    Same arithmetic order as PyTorch's kernel, so the results agree to float rounding."""
    length = (end - start).unsqueeze(1)
    positions = torch.arange(size, device=start.device, dtype=torch.float32)
    if align_corners:
        inside = (length - 1).to(torch.float32) / max(size - 1, 1) * positions
    else:
        inside = (length.to(torch.float32) / size * (positions + 0.5) - 0.5).clamp(min=0)
    low = inside.floor().long().minimum(length - 1)
    high = (low + 1).minimum(length - 1)
    weight = inside - low  # irrelevant where low == high (the crop's last pixel)
    return start.unsqueeze(1) + low, start.unsqueeze(1) + high, weight


def _blend(
    images: torch.Tensor, dim: int, low: torch.Tensor, high: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Linear interpolation of `images` along `dim` (2: rows, 3: columns) between per-sample taps."""
    shape = [images.shape[0], 1, 1, 1]
    shape[dim] = low.shape[1]
    expand = list(images.shape)
    expand[dim] = low.shape[1]

    def take(index: torch.Tensor) -> torch.Tensor:
        return images.gather(dim, index.view(shape).expand(expand))

    weight = weight.view(shape).to(images.dtype)
    return take(low) * (1 - weight) + take(high) * weight


def crop_and_resize(images: torch.Tensor, boxes: torch.Tensor, align_corners: bool = False) -> torch.Tensor:
    """Crop each image to its (x0, y0, x1, y1) box and resize it bilinearly to the input size (aspect
    not kept), for the whole batch at once: separable bilinear interpolation with per-sample taps.
    Equals slicing each crop and calling F.interpolate(crop, (H, W), mode='bilinear',
    align_corners=align_corners); the reference code resizes with align_corners=True."""
    height, width = images.shape[-2:]
    rows = _blend(images, 2, *_bilinear_taps(boxes[:, 1], boxes[:, 3], height, align_corners))
    return _blend(rows, 3, *_bilinear_taps(boxes[:, 0], boxes[:, 2], width, align_corners))


def check_selected_count(key: str, count: int, facts, image_size: int) -> None:
    """Refuse, before any work, selecting more patches than the backbone has at `image_size`
    (`facts`: the method check's `BackboneFacts`)."""
    if facts.patches is not None and count > facts.patches:
        raise ConfigError(f"{key}={count} is larger than the number of patches "
                          f"({image_size}/{facts.patch_size[0]})^2 = {facts.patches} at data.image_size={image_size}")


def embed_with_cls(backbone: Backbone, images: torch.Tensor, cls_token: torch.Tensor) -> torch.Tensor:
    """`Backbone.embed` with `cls_token` (1, 1, D) in the CLS slot, for a crop's own class token. The
    slot holds the backbone's cls_token (plus its position embedding when the model adds one), so
    adding the difference of the two CLS tokens swaps it for every position-embedding flavour; this
    happens before the pre-norm, as in embed."""
    vit = backbone.vit
    tokens = vit._pos_embed(vit.patch_embed(images))
    cls_slot = tokens[:, :1] + (cls_token - vit.cls_token)
    tokens = torch.cat([cls_slot, tokens[:, 1:]], dim=1)
    return vit.norm_pre(vit.patch_drop(tokens))


def gls_score_flops(num_patches: int, dim: int, similarity: str) -> int:
    """FLOPs of the GLS scores of one image, counted by hand (FlopCounterMode sees no element-wise
    op). Cosine: per patch a dot product and a squared norm (D multiplies and D - 1 adds each), a
    square root, a multiply of the two norms and a divide; the global token's squared norm and its
    root once: N (4D + 1) + 2D in all. l1 and l2: a difference, an abs or square and a sum per element: 3 N D."""
    if similarity not in SIMILARITIES:
        raise ValueError(f"unknown GLS similarity '{similarity}' (known: {', '.join(SIMILARITIES)})")
    return num_patches * (4 * dim + 1) + 2 * dim if similarity == "cosine" else 3 * num_patches * dim


def selection_flops(num_patches: int, dim: int, similarity: str, crop_size: tuple[int, int], channels: int = 3) -> int:
    """FLOPs of GLSim's selection for one image, counted by hand: the GLS scores (`gls_score_flops`)
    and the bilinear resize of the crop, 4 multiply-adds per output value, 8 * C * H * W. Top-O and
    the box are comparisons, not counted here."""
    return gls_score_flops(num_patches, dim, similarity) + 8 * channels * crop_size[0] * crop_size[1]
