"""Checks shared by the tests of the comparison methods (MPN-COV, VQT, TransFG, FFVT, RAMS-Trans)."""

import math

import torch

from conftest import tiny_overrides
from fgir.cli import main
from fgir.engine.trainer import train
from fgir.models.backbone import Backbone


def vit_b16(image_size: int, **timm_kwargs) -> Backbone:
    """ViT-B/16 on the meta device: shapes only, no memory, no compute, no download."""
    with torch.device("meta"):
        return Backbone.create("vit_base_patch16_224", pretrained=False, img_size=image_size, **timm_kwargs)


def added_parameters(model: torch.nn.Module) -> dict[str, int]:
    """Parameter counts of the modules a method adds around its backbone, by top-level child."""
    counts = {}
    for name, parameter in model.named_parameters():
        child = name.split(".")[0]
        if child != "backbone":
            counts[child] = counts.get(child, 0) + parameter.numel()
    return counts


def trains_one_epoch(tiny_config, *overrides: str) -> None:
    """A short run through the trainer ends with finite validation and test metrics."""
    result = train(tiny_config("train.epochs=1", *overrides), progress=False)
    for metrics in (result.val_metrics, result.test_metrics):
        assert all(math.isfinite(value) for value in metrics.values() if isinstance(value, float)), metrics


def refused_before_work(tmp_path, capsys, *overrides: str) -> str:
    """`fgir train` with these overrides exits 2 with one error line before any work: no run header,
    no run folder, no model built."""
    assert main(["train", *tiny_overrides(tmp_path, *overrides), "--no-progress"]) == 2
    out, err = capsys.readouterr()
    assert "method " not in out, out
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("fgir train: error: "), lines
    assert not (tmp_path / "runs").exists()
    return lines[0]


def trainable_and_reached(model: torch.nn.Module) -> set[str]:
    """The names of the trainable parameters, after checking that one backward pass of a training
    forward gives each of them a non-zero gradient and no other parameter any."""
    model.train()(torch.randn(4, 3, 32, 32)).logsumexp(dim=1).sum().backward()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == trainable
    return trainable
