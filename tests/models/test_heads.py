import torch

from fgir.models.heads import LinearHead


def test_zero_init_head_predicts_uniformly_and_the_other_init_does_not():
    features = torch.randn(4, 16)
    zero = LinearHead(16, 5, zero_init=True)
    assert torch.equal(zero(features), torch.zeros(4, 5))
    torch.manual_seed(0)
    random = LinearHead(16, 5, zero_init=False)
    assert random(features).abs().sum() > 0 and torch.equal(random.bias, torch.zeros(5))
    assert 0.01 < random.weight.std().item() < 0.03  # timm's ViT head init: truncated normal, std 0.02
