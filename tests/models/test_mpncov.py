import pytest
import torch
from method_checks import added_parameters, trains_one_epoch, vit_b16

from conftest import tiny_backbone
from fgir.config import ConfigError, model_config
from fgir.models.mpncov import (
    MPNCOVClassifier,
    MPNCOVConfig,
    build_mpncov,
    covariance,
    newton_schulz_sqrt,
    upper_triangle,
)

CLASSES = 5


def eigen_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return vectors @ torch.diag_embed(values.clamp_min(0).sqrt()) @ vectors.transpose(1, 2)


def test_covariance_is_the_biased_estimate_of_the_centring_matrix_form():
    tokens = torch.randn(3, 10, 4, dtype=torch.float64)
    count = tokens.shape[1]
    centring = (torch.eye(count, dtype=torch.float64) - torch.ones(count, count, dtype=torch.float64) / count) / count
    expected = tokens.transpose(1, 2) @ centring @ tokens  # the reference's X I_hat X^T
    torch.testing.assert_close(covariance(tokens), expected)
    torch.testing.assert_close(covariance(tokens)[0], torch.cov(tokens[0].T, correction=0))


def test_newton_schulz_approaches_the_eigendecomposition_square_root():
    torch.manual_seed(0)
    # Channels of scales 1 to 0.03: a condition number near 1000, so convergence takes iterations.
    features = torch.randn(4, 200, 8, dtype=torch.float64) * torch.logspace(0, -1.5, 8, dtype=torch.float64)
    spd = covariance(features)
    exact = eigen_sqrt(spd)
    errors = [(newton_schulz_sqrt(spd, k) - exact).norm() / exact.norm() for k in (1, 3, 5, 10, 30)]
    assert errors == sorted(errors, reverse=True)  # more iterations, closer
    assert 0.01 < errors[2] < 0.1 and errors[-1] < 1e-12  # 5 iterations approximate; many converge
    root = newton_schulz_sqrt(spd, 30)
    torch.testing.assert_close(root @ root, spd)


def test_five_iterations_follow_the_coupled_recurrence_written_out():
    torch.manual_seed(0)
    spd = covariance(torch.randn(2, 50, 6, dtype=torch.float64))
    trace = spd.diagonal(dim1=1, dim2=2).sum(-1)[:, None, None]
    eye = torch.eye(6, dtype=torch.float64)
    a = spd / trace
    # The reference's unrolled form: the first step from (A, I), three in the loop, the last for Y only.
    t = 0.5 * (3 * eye - a)
    y, z = a @ t, t
    for _ in range(3):
        t = 0.5 * (3 * eye - z @ y)
        y, z = y @ t, t @ z
    y = 0.5 * y @ (3 * eye - z @ y)
    torch.testing.assert_close(newton_schulz_sqrt(spd, 5), y * trace.sqrt())


def test_upper_triangle_is_row_major_on_and_above_the_diagonal():
    matrix = torch.arange(9.0).reshape(1, 3, 3)
    assert upper_triangle(matrix).tolist() == [[0, 1, 2, 4, 5, 8]]


def test_forward_shape_and_pooling_of_the_patch_tokens_only():
    model = MPNCOVClassifier(tiny_backbone(), CLASSES, MPNCOVConfig(reduction=6), zero_init_head=False).eval()
    images = torch.randn(3, 3, 32, 32)
    logits = model(images)
    assert logits.shape == (3, CLASSES)
    patches = model.backbone.patch_tokens(model.backbone.forward_features(images))
    assert patches.shape[1] == 16
    pooling = model.pooling
    norm = pooling.norm
    reduced = torch.relu((patches @ pooling.reduce.weight.T - norm.running_mean) / (norm.running_var + norm.eps).sqrt()
                         * norm.weight + norm.bias)
    expected = upper_triangle(newton_schulz_sqrt(covariance(reduced), 5))
    assert expected.shape == (3, 21)
    torch.testing.assert_close(model.head(expected), logits)


def test_added_parameters_for_vit_b16_at_448():
    with torch.device("meta"):
        model = build_mpncov(vit_b16(448), 200, model_config("mpncov"))
    # Reference shapes: Conv2d(768, 64, 1, bias=False), BatchNorm2d(64), Linear(64 * 65 / 2, classes).
    assert added_parameters(model) == {"pooling": 768 * 64 + 2 * 64, "head": 2080 * 200 + 200}
    assert sum(added_parameters(model).values()) == 465_480


@pytest.mark.parametrize("frozen", [True, False])
def test_gradients_reach_the_head_and_reduction_and_the_backbone_only_when_full(frozen):
    model = MPNCOVClassifier(tiny_backbone(), CLASSES, MPNCOVConfig(reduction=4, frozen=frozen),
                             zero_init_head=False).train()
    model(torch.randn(4, 3, 32, 32)).logsumexp(dim=1).sum().backward()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == trainable
    backbone = {name for name in trainable if name.startswith("backbone.")}
    assert backbone == ({"backbone.vit.cls_token"} if frozen else backbone)
    assert frozen or "backbone.vit.blocks.0.attn.qkv.weight" in backbone
    assert model.backbone.blocks[0].training is not frozen  # frozen modules stay in evaluation mode
    assert bool(model.frozen_state_keys()) is frozen


def test_a_non_positive_reduction_is_refused_with_its_key():
    with pytest.raises(ConfigError, match=r"model\.mpncov\.reduction"):
        MPNCOVConfig(reduction=0)


@pytest.mark.parametrize("frozen", ["true", "false"])
def test_one_epoch_through_the_trainer(tiny_config, frozen):
    trains_one_epoch(tiny_config, "model.method=mpncov", "model.mpncov.reduction=8", f"model.mpncov.frozen={frozen}")
