import math

import pytest
import torch
import torch.nn.functional as F
from method_checks import added_parameters, refused_before_work, trains_one_epoch, vit_b16

from conftest import tiny_backbone
from fgir.config import ConfigError, model_config
from fgir.models.attention_maps import block_with_scores
from fgir.models.simtrans import (
    SIMTrans,
    SIMTransConfig,
    StructureGraph,
    build_simtrans,
    contrastive_loss,
    polar_graph,
)

CLASSES = 5


def make(depth=3, **config) -> SIMTrans:
    return SIMTrans(tiny_backbone(depth=depth), CLASSES, SIMTransConfig(**{"levels": 2, "head_width": 16, **config}),
                    zero_init_head=False)


def polar_by_hand(weights: list[float], rows: int, cols: int) -> tuple[list[tuple[float, float]], list[float], int]:
    """One sample: mask above the mean, anchor = the largest kept weight, then each patch's distance
    and angle to it, counted in grid rows, as the paper's polar coordinates."""
    mean = sum(weights) / len(weights)
    kept = [w if w > mean else 0.0 for w in weights]
    anchor = kept.index(max(kept))
    a_row, a_col = divmod(anchor, cols)
    nodes = []
    for index, weight in enumerate(weights):
        row, col = divmod(index, cols)
        dy, dx = (row - a_row) / rows, (col - a_col) / rows
        polar = (math.hypot(dy, dx), (math.atan2(dx, dy) / math.pi + 1) / 2)
        nodes.append(polar if weight > mean else (0.0, 0.0))
    return nodes, kept, anchor


def test_polar_features_on_a_constructed_grid():
    rows, cols = 3, 4
    weights = [0.01, 0.02, 0.30, 0.05, 0.01, 0.12, 0.25, 0.02, 0.01, 0.01, 0.15, 0.05]
    features, node_weights, anchor = polar_graph(torch.tensor([weights, weights[::-1]], dtype=torch.float64),
                                                 (rows, cols))
    assert anchor.tolist() == [2, 9]
    # Patch 5 at (1, 1), a row below and a column left of the anchor at (0, 2): sqrt(2)/3 and -pi/4.
    assert features[0, 5].tolist() == pytest.approx([math.sqrt(2) / 3, (-0.25 + 1) / 2])
    assert features[0, 2].tolist() == [0.0, 0.5] and features[0, 0].tolist() == [0.0, 0.0]  # anchor; masked
    for sample, row in enumerate((weights, weights[::-1])):
        nodes, kept, expected_anchor = polar_by_hand(row, rows, cols)
        assert anchor[sample] == expected_anchor
        torch.testing.assert_close(features[sample], torch.tensor(nodes, dtype=torch.float64))
        torch.testing.assert_close(node_weights[sample], torch.tensor(kept, dtype=torch.float64))


def graph_by_loops(graph: StructureGraph, features, node_weights, anchor) -> torch.Tensor:
    """Both graph layers over every node with the adjacency A[n][m] = w_n w_m written out (no
    dropout), then the anchor's row."""
    first, second = graph.first.tolist(), graph.second.tolist()
    leaky = lambda x: x if x > 0 else 0.2 * x  # noqa: E731
    out = []
    for b in range(features.shape[0]):
        w, x = node_weights[b].tolist(), features[b].tolist()
        n = len(w)
        adjacency = [[w[i] * w[j] for j in range(n)] for i in range(n)]
        support = [[sum(x[i][k] * first[k][h] for k in range(2)) for h in range(len(first[0]))] for i in range(n)]
        hidden = [[max(leaky(sum(adjacency[i][j] * support[j][h] for j in range(n))), 0.0)
                   for h in range(len(first[0]))] for i in range(n)]
        support = [[sum(hidden[i][k] * second[k][d] for k in range(len(second))) for d in range(len(second[0]))]
                   for i in range(n)]
        a = int(anchor[b])
        out.append([leaky(sum(adjacency[a][j] * support[j][d] for j in range(n))) for d in range(len(second[0]))])
    return torch.tensor(out, dtype=features.dtype)


def test_graph_convolution_equals_the_explicit_adjacency_loops():
    torch.manual_seed(0)
    graph = StructureGraph(width=6, hidden=5, dropout=0.1).double().eval()
    features, node_weights, anchor = polar_graph(torch.rand(3, 12, dtype=torch.float64).softmax(-1), (3, 4))
    torch.testing.assert_close(graph(features, node_weights, anchor), graph_by_loops(graph, features, node_weights, anchor))
    graph.train()
    torch.manual_seed(1)
    dropped = graph(features, node_weights, anchor)
    assert not torch.allclose(dropped, graph_by_loops(graph, features, node_weights, anchor))  # dropout trains only


def test_forward_adds_structure_to_cls_in_the_last_levels_and_fuses_their_cls():
    model = make(depth=3, levels=2).eval()
    images = torch.randn(2, 3, 32, 32)
    backbone = model.backbone
    tokens = backbone.blocks[0](backbone.embed(images))  # below the levels: a plain block
    fused = []
    for block in (backbone.blocks[1], model.last_block):
        tokens, scores = block_with_scores(block, tokens)
        cls_rows = scores.softmax(-1)[:, :, 0, 1:].mean(1)
        features, node_weights, anchor = polar_graph(cls_rows, (4, 4))
        structure = graph_by_loops(model.structure, features, node_weights, anchor)
        tokens = tokens.clone()
        tokens[:, 0] += structure
        fused.append(backbone.norm(tokens[:, 0]))
    expected = model.head(torch.cat(fused, dim=1))
    torch.testing.assert_close(model(images), expected, rtol=1e-4, atol=1e-5)


def test_structure_changes_only_the_cls_token():
    model = make().eval()
    tokens = torch.randn(2, 17, 32)
    probabilities = torch.randn(2, 2, 17, 17).softmax(-1)
    out = model.add_structure(tokens, probabilities, (4, 4))
    assert torch.equal(out[:, 1:], tokens[:, 1:]) and not torch.allclose(out[:, 0], tokens[:, 0])


@pytest.mark.parametrize("frozen", [True, False])
def test_gradient_census_frozen_and_full(frozen):
    """Exactly these get a gradient: everything but the never-run last backbone block (full), or the
    added modules and the CLS token (frozen)."""
    model = make(frozen=frozen).train()
    model(torch.randn(4, 3, 32, 32)).logsumexp(dim=1).sum().backward()
    names = {name for name, _ in model.named_parameters()}
    if frozen:
        expected = {name for name in names if not name.startswith("backbone.")} | {"backbone.vit.cls_token"}
    else:
        expected = {name for name in names if not name.startswith("backbone.vit.blocks.2.")}
    assert {"structure.first", "structure.second", "last_block.attn.qkv.weight", "head.0.weight"} <= expected
    assert {name for name, p in model.named_parameters() if p.requires_grad} == expected
    assert {name for name, p in model.named_parameters() if p.grad is not None and p.grad.any()} == expected
    assert model.backbone.blocks[0].training is not frozen and model.structure.training


def reference_trainable(classes: int) -> int:
    """The parameters the reference's ViT-B/16 SIM-Trans at 448 uses, from its layer shapes: patch
    convolution, position embedding (1 + 28 x 28), CLS, 11 blocks with separate q, k, v + the part
    layer, the final (part) norm, the graph convolution's two weights, the boosting head."""
    d, mlp = 768, 3072
    block = 2 * (2 * d) + 4 * (d * d + d) + (d * mlp + mlp) + (mlp * d + d)
    embedding = (16 * 16 * 3 * d + d) + (1 + 28 * 28) * d + d
    graph = 2 * 512 + 512 * d
    head = 2 * (3 * d) + (3 * d * 1024 + 1024) + 2 * 1024 + (1024 * classes + classes)
    return embedding + 12 * block + 2 * d + graph + head


def test_parameters_of_vit_b16_at_448_match_the_reference():
    with torch.device("meta"):
        model = build_simtrans(vit_b16(448), 200, model_config("simtrans"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == reference_trainable(200) == 89_216_456
    assert added_parameters(model) == {"last_block": 7_087_872, "structure": 394_240,
                                       "head": 4608 + 2_360_320 + 2048 + 205_000}


def contrastive_by_pairs(features: torch.Tensor, labels: list[int], margin: float) -> float:
    """Per anchor i: same class costs 1 - cos; another class costs 1 + cos when its distance
    (1 - cos) / 2 is within the margin of i's mean distance to the rest of its class."""
    n, total = len(labels), 0.0
    cos = [[F.cosine_similarity(features[i], features[j], dim=0).item() for j in range(n)] for i in range(n)]
    for i in range(n):
        same = [(1 - cos[i][j]) / 2 for j in range(n) if j != i and labels[j] == labels[i]]
        mean = sum(same) / len(same) if same else 0.0
        for j in range(n):
            if labels[j] == labels[i]:
                total += 1 - cos[i][j]
            elif (1 - cos[i][j]) / 2 <= margin + mean:
                total += 1 + cos[i][j]
    return total / n**2


def test_contrastive_loss_equals_the_pairwise_definition():
    torch.manual_seed(0)
    features, labels = torch.randn(7, 8), [0, 1, 0, 2, 1, 0, 3]
    for margin in (0.0, 0.05, 0.3):
        expected = contrastive_by_pairs(features, labels, margin)
        assert contrastive_loss(features, torch.tensor(labels), margin).item() == pytest.approx(expected, rel=1e-5)
    # A smaller margin leaves out more pairs of different classes.
    assert contrastive_loss(features, torch.tensor(labels), 0.0) < contrastive_loss(features, torch.tensor(labels), 0.9)


def test_extra_loss_is_the_weighted_contrastive_loss_of_the_final_cls_in_training():
    model = make(contrastive_weight=1.0).train()
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])
    torch.manual_seed(5)
    model(images)
    torch.manual_seed(5)
    final_cls = model.features(images)[:, -32:]
    torch.testing.assert_close(model.extra_loss(None, labels), contrastive_loss(final_cls, labels))
    soft = F.one_hot(labels, CLASSES).float() * 0.7 + 0.06  # mixed targets: the dominant class counts
    torch.testing.assert_close(model.extra_loss(None, soft), model.extra_loss(None, labels))
    model.eval()(images)
    assert model.extra_loss(None, labels) is None
    off = make().train()
    off(images)
    assert off.extra_loss(None, labels) is None


def test_more_levels_than_blocks_are_refused():
    with pytest.raises(ConfigError, match=r"model.simtrans.levels=4 is more than the 3 blocks"):
        make(depth=3, levels=4)


@pytest.mark.parametrize("frozen", ["true", "false"])
def test_one_epoch_through_the_trainer(tiny_config, frozen):
    trains_one_epoch(tiny_config, "model.method=simtrans", "model.simtrans.levels=2", "model.simtrans.head_width=16",
                     "model.simtrans.contrastive_weight=1", f"model.simtrans.frozen={frozen}")


def test_levels_above_the_depth_are_refused_before_any_work(tmp_path, capsys):
    line = refused_before_work(tmp_path, capsys, "model.method=simtrans")
    assert line.endswith("model.simtrans.levels=3 is more than the 2 blocks of the backbone")
