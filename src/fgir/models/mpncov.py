"""MPN-COV head, the iSQRT-COV variant (Li et al., CVPR 2018, arXiv 1712.01034, Section 3; method
`mpncov`): second-order pooling of the ViT's patch tokens as the classifier.

The arithmetic of the reference implementation (fast-MPN-COV, as the ILA paper's comparison uses it
on ViT-B/16, arXiv 2409.11051, Table 1):
1. reduction: a bias-free 1x1 convolution D -> d (d = 64 on the ViT; 256 on CNNs), BatchNorm, ReLU;
2. covariance over the N patch tokens: Sigma = X (I - 11^T / N) X^T / N, (d, d), the biased estimate;
3. pre-normalisation by the trace: A = Sigma / tr(Sigma);
4. Newton-Schulz iterations (Section 3.2, eq. 3): Y_0 = A, Z_0 = I; T_k = (3I - Z_{k-1} Y_{k-1}) / 2,
   Y_k = Y_{k-1} T_k, Z_k = T_k Z_{k-1}; after K iterations Y_K ~ A^(1/2) (K = 5);
5. post-compensation: Y_K * sqrt(tr(Sigma));
6. the upper triangle, row by row, d(d + 1) / 2 values, then the linear head.

The reference writes the backward pass of steps 2-6 by hand; here autograd differentiates the same
iterations. The square root runs in float32 even under autocast (products of K matrices lose too
much in half precision). The reference ViT for this head has no CLS token; the timm backbone keeps its
prefix tokens in the sequence and only the patch tokens are pooled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from fgir.config import ModelConfig
from fgir.methods import register_method
from fgir.models.backbone import Backbone
from fgir.models.freezable import FreezableConfig, freeze_if_asked
from fgir.models.heads import LinearHead
from fgir.models.peft.freezing import FrozenBackboneModel


@dataclass
class MPNCOVConfig(FreezableConfig):
    """MPN-COV head (arXiv 1712.01034): covariance pooling with Newton-Schulz square root; frozen
    backbone by default, as in the ILA paper's comparison (arXiv 2409.11051, Table 1)."""

    section: ClassVar[str] = "mpncov"
    POSITIVE: ClassVar[tuple[str, ...]] = ("reduction", "iterations")

    reduction: int = 64  # d, channels the tokens are reduced to before pooling
    iterations: int = 5  # Newton-Schulz iterations K


def covariance(tokens: torch.Tensor) -> torch.Tensor:
    """(B, N, d) -> (B, d, d): the biased covariance of the N tokens."""
    centred = tokens - tokens.mean(dim=1, keepdim=True)
    return centred.transpose(1, 2) @ centred / tokens.shape[1]


def newton_schulz_sqrt(matrix: torch.Tensor, iterations: int) -> torch.Tensor:
    """Square root of SPD matrices (B, d, d): trace pre-normalisation, `iterations` coupled
    Newton-Schulz steps, sqrt(trace) post-compensation."""
    trace = matrix.diagonal(dim1=1, dim2=2).sum(dim=1)[:, None, None]
    y = matrix / trace
    eye3 = 3.0 * torch.eye(matrix.shape[1], dtype=matrix.dtype, device=matrix.device)
    z = torch.eye(matrix.shape[1], dtype=matrix.dtype, device=matrix.device).expand_as(matrix)
    for _ in range(iterations):
        t = 0.5 * (eye3 - z @ y)
        y, z = y @ t, t @ z
    return y * trace.sqrt()


def upper_triangle(matrix: torch.Tensor) -> torch.Tensor:
    """(B, d, d) -> (B, d(d + 1) / 2): the entries on and above the diagonal, row-major."""
    rows, cols = torch.triu_indices(matrix.shape[1], matrix.shape[2], device=matrix.device)
    return matrix[:, rows, cols]


class CovariancePooling(nn.Module):
    """Patch tokens (B, N, D) -> the vectorised square-rooted covariance (B, d(d + 1) / 2)."""

    def __init__(self, dim: int, reduction: int = 64, iterations: int = 5):
        super().__init__()
        self.iterations = iterations
        # The reference's 1x1 convolution on the patch grid is this per-token linear map.
        self.reduce = nn.Linear(dim, reduction, bias=False)
        self.norm = nn.BatchNorm1d(reduction)
        self.act = nn.ReLU()
        nn.init.kaiming_normal_(self.reduce.weight, mode="fan_out", nonlinearity="relu")

    @property
    def out_features(self) -> int:
        reduction = self.reduce.out_features
        return reduction * (reduction + 1) // 2

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        reduced = self.act(self.norm(self.reduce(tokens).transpose(1, 2))).transpose(1, 2)
        with torch.autocast(reduced.device.type, enabled=False):
            root = newton_schulz_sqrt(covariance(reduced.float()), self.iterations)
        return upper_triangle(root)


class MPNCOVClassifier(FrozenBackboneModel):
    def __init__(self, backbone: Backbone, num_classes: int, config: MPNCOVConfig, zero_init_head: bool = True):
        super().__init__()
        freeze_if_asked(backbone, config)
        self.backbone = backbone
        self.pooling = CovariancePooling(backbone.embed_dim, config.reduction, config.iterations)
        self.head = LinearHead(self.pooling.out_features, num_classes, zero_init=zero_init_head)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.backbone.forward_features(images)
        pooled = self.pooling(self.backbone.patch_tokens(tokens))
        return self.head(pooled.to(tokens.dtype))


def build_mpncov(backbone: Backbone, num_classes: int, model: ModelConfig) -> MPNCOVClassifier:
    return MPNCOVClassifier(backbone, num_classes, model.mpncov, zero_init_head=model.zero_init_head)


register_method("mpncov", build=build_mpncov, config=MPNCOVConfig)
