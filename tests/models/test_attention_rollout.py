"""Attention rollout against its definition (arXiv 2005.00928, eq. in Section 3), written per token."""

import torch

from fgir.models.layers.attention_rollout import attention_rollout


def rollout_by_definition(maps: list[torch.Tensor]) -> torch.Tensor:
    batch, _, size, _ = maps[0].shape
    result = torch.zeros(batch, size, size, dtype=torch.float64)
    for b in range(batch):
        joint = torch.eye(size, dtype=torch.float64)
        for layer in maps:
            average = sum(layer[b, h].double() for h in range(layer.shape[1])) / layer.shape[1]
            raw = [[(average[i, j] + (1.0 if i == j else 0.0)).item() for j in range(size)] for i in range(size)]
            rows = torch.tensor([[value / sum(row) for value in row] for row in raw], dtype=torch.float64)
            joint = rows @ joint
        result[b] = joint
    return result


def test_rollout_equals_definition():
    torch.manual_seed(0)
    maps = [torch.randn(2, 3, 5, 5).softmax(dim=-1) for _ in range(4)]
    torch.testing.assert_close(attention_rollout(maps).double(), rollout_by_definition(maps), atol=1e-6, rtol=0)


def test_rollout_rows_stay_distributions():
    torch.manual_seed(1)
    maps = [torch.randn(1, 2, 7, 7).softmax(dim=-1) for _ in range(3)]
    rolled = attention_rollout(maps)
    torch.testing.assert_close(rolled.sum(dim=-1), torch.ones(1, 7))
    assert (rolled >= 0).all()
