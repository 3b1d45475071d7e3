import csv

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import tiny_backbone, tiny_overrides
from fgir.engine.checkpoint import save_checkpoint
from fgir.methods import build_model
from fgir.models.layers.attention_capture import attention_matrices
from fgir.tools.cka import (
    analyze_cka,
    center_gram,
    cka,
    cka_matrix,
    gram_linear,
    gram_rbf,
    is_recipe,
    layer_representations,
    load_for_analysis,
    model_cka,
)


def hsic_cka(x, y):
    """CKA the textbook way: numpy, explicit centering matrix H, HSIC = tr(K H L H) / (n - 1)^2."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = x @ x.T, y @ y.T

    def hsic(a, b):
        return np.trace(a @ h @ b @ h) / (n - 1) ** 2

    return hsic(k, l_) / np.sqrt(hsic(k, k) * hsic(l_, l_))


def feature_space_cka(x, y):
    """Linear CKA from centered features: ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)."""
    x, y = x.double() - x.double().mean(0), y.double() - y.double().mean(0)
    return float((y.T @ x).norm() ** 2 / ((x.T @ x).norm() * (y.T @ y).norm()))


@pytest.fixture
def features():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(20, 7, generator=generator, dtype=torch.float64)
    y = x @ torch.randn(7, 5, generator=generator, dtype=torch.float64) + 0.5 * torch.randn(
        20, 5, generator=generator, dtype=torch.float64)
    return x, y


def test_linear_cka_matches_hsic_with_explicit_centering_and_the_feature_formula(features):
    x, y = features
    value = cka(x, y)
    assert value == pytest.approx(hsic_cka(x, y), abs=1e-12)
    assert value == pytest.approx(feature_space_cka(x, y), abs=1e-12)
    assert 0.1 < value < 0.99  # a real, non-trivial similarity


def test_centering_equals_the_centering_matrix(features):
    k = gram_linear(features[0])
    h = torch.eye(20, dtype=torch.float64) - 1 / 20
    assert torch.allclose(center_gram(k), h @ k @ h, atol=1e-12)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_cka_of_identical_features_is_one_and_invariant_to_rotation_and_scaling(features, kernel):
    x, y = features
    rotation, _ = torch.linalg.qr(torch.randn(7, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    assert cka(x, x, kernel) == pytest.approx(1.0, abs=1e-12)
    base = cka(x, y, kernel)
    assert cka(x @ rotation, y, kernel) == pytest.approx(base, abs=1e-10)
    assert cka(3.7 * x, 0.01 * y, kernel) == pytest.approx(base, abs=1e-10)
    assert cka(x, torch.randn(20, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64), kernel) < base


def test_cka_is_not_invariant_to_anisotropic_scaling(features):
    x, y = features
    assert cka(x * torch.arange(1.0, 8.0), y) != pytest.approx(cka(x, y), abs=1e-3)


def test_rbf_gram_uses_the_median_distance():
    x = torch.tensor([[0.0], [1.0], [3.0]])  # distances 1, 2, 3: median squared distance 4
    expected = torch.exp(-torch.tensor([[0, 1, 9], [1, 0, 4], [9, 4, 0]], dtype=torch.float64) / (2 * 0.25 * 4))
    assert torch.allclose(gram_rbf(x, bandwidth=0.5), expected)


def test_constant_representation_is_a_clear_error():
    with pytest.raises(ValueError, match="representation 1 is the same for every image"):
        cka_matrix([gram_linear(torch.randn(4, 3)), gram_linear(torch.ones(4, 3))])


def images(n=6, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("representation", ["cls", "mean", "attention"])
def test_model_cka_is_symmetric_with_unit_diagonal_and_equals_pairwise_cka(representation):
    backbone = tiny_backbone(depth=4)
    matrix = model_cka(backbone, images(), representation)
    assert matrix.shape == (4, 4)
    assert torch.allclose(matrix, matrix.T, atol=1e-12)
    assert torch.allclose(matrix.diagonal(), torch.ones(4, dtype=torch.float64), atol=1e-12)
    layers = layer_representations(backbone, images(), representation)
    assert matrix[0, 3] == pytest.approx(hsic_cka(layers[0], layers[3]), abs=1e-6)


def test_layer_representations_are_the_blocks_tokens_and_attention():
    backbone = tiny_backbone(depth=3)
    batch = images(4)
    with torch.no_grad():
        _, tokens = backbone.forward_tokens(batch, return_layers=[0, 1, 2])
    cls = layer_representations(backbone, batch, "cls")
    mean = layer_representations(backbone, batch, "mean")
    attention = layer_representations(backbone, batch, "attention")
    for i in range(3):
        assert torch.allclose(cls[i], tokens[i][:, 0], atol=1e-6)
        assert torch.allclose(mean[i], tokens[i][:, 1:].mean(1), atol=1e-6)
        assert torch.allclose(attention[i], attention_matrices(backbone, batch)[i].mean(1).flatten(1), atol=1e-6)


def test_batches_give_the_same_matrix_as_one_pass():
    backbone = tiny_backbone(depth=3)
    whole = model_cka(backbone, images(6), "mean")
    assert torch.allclose(model_cka(backbone, list(images(6).split(4)), "mean"), whole, atol=1e-6)


class Shrinking(nn.Module):
    """A method in the style of ILA: it drops patch tokens after block 0, so layers differ in size."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.embed_dim, 3)

    def forward(self, batch):
        tokens = self.backbone.embed(batch)
        tokens = self.backbone.run_blocks(tokens, between={0: lambda t: t[:, :9]})
        return self.head(self.backbone.norm(tokens)[:, 0])


def test_model_cka_follows_the_method_and_allows_layers_of_different_size():
    model = Shrinking(tiny_backbone(depth=3)).train()
    attention = layer_representations(model, images(4), "attention")
    assert [a.shape[1] for a in attention] == [17 * 17, 9 * 9, 9 * 9]
    assert model.training  # the analysis restores the mode it found
    matrix = model_cka(model, images(4), "attention")
    assert torch.allclose(matrix.diagonal(), torch.ones(3, dtype=torch.float64), atol=1e-12)


def test_bad_arguments_are_named():
    backbone = tiny_backbone()
    with pytest.raises(ValueError, match="representation must be one of cls, mean, attention, got 'tokens'"):
        model_cka(backbone, images(), "tokens")
    with pytest.raises(ValueError, match="kernel must be one of linear, rbf, got 'cosine'"):
        model_cka(backbone, images(), kernel="cosine")
    with pytest.raises(ValueError, match="at least 2 images"):
        model_cka(backbone, images(1))
    with pytest.raises(TypeError, match="holds 0 ViT backbones"):
        model_cka(nn.Linear(3, 3), images())


def test_analyze_cka_compares_a_checkpoint_and_a_recipe_side_by_side(tiny_config, tmp_path):
    config = tiny_config()
    model = build_model(config.model, 3, config.data.image_size)
    checkpoint = tmp_path / "model.safetensors"
    save_checkpoint(checkpoint, model, config, ["a", "b", "c"], epoch=1, global_step=1, metrics={})
    recipe = tmp_path / "deeper.yaml"
    recipe.write_text("model:\n  method: vit\n")
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    matrices, path = analyze_cka([checkpoint, recipe], folder, tmp_path / "out" / "cka.png", representation="cls",
                                 batch_size=2, device="cpu",
                                 overrides=tiny_overrides(tmp_path, "model.backbone_args.depth=3"))
    assert list(matrices) == [str(checkpoint), str(recipe)]
    assert [m.shape for m in matrices.values()] == [(2, 2), (3, 3)]  # the override reached the recipe only
    assert path.stat().st_size > 0
    with open(tmp_path / "out" / "cka.csv") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["source", "layer", "1", "2", "3"]
    for name, matrix in matrices.items():
        mine = [[float(v) for v in row[2:2 + len(matrix)]] for row in rows[1:] if row[0] == name]
        assert np.allclose(mine, matrix.numpy(), atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cka.csv", "cka.png"]
    with pytest.raises(ValueError, match="overrides apply to a YAML recipe"):
        analyze_cka(checkpoint, folder, tmp_path / "x.png", overrides=["train.lr=0.1"])


def test_a_recipe_builds_the_untrained_model_and_overrides_need_a_recipe(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model:\n  method: vit\ndata:\n  num_classes: 4\n")
    model, data = load_for_analysis(recipe, torch.device("cpu"), tiny_overrides(tmp_path, "model.backbone_args.depth=3"))
    assert not model.training and data.image_size == 32 and model.head.out_features == 4
    assert model_cka(model, images(4), "cls").shape == (3, 3)
    with pytest.raises(ValueError, match="overrides apply to a YAML recipe, not to a checkpoint"):
        load_for_analysis(tmp_path / "run", torch.device("cpu"), ["train.lr=0.1"])


def test_a_recipe_name_is_a_recipe_and_a_run_directory_is_not(tmp_path):
    assert is_recipe("cotton/linear") and is_recipe(tmp_path / "mine.yaml")
    assert not is_recipe(tmp_path) and not is_recipe("runs/cotton-ila-pp")
