"""Trainer features around the loop: unreadable images (data.on_error), the generic model hooks
(extra loss, trainable-parameter report), initialising from another run (train.init_from,
train.init_new_head) and the checks made before any work."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from fgir.config import ConfigError
from fgir.data.datasets import build_dataset
from fgir.data.images import ImageReadError
from fgir.data.sampler import EpochSampler
from fgir.data.synthetic import ensure_synthetic
from fgir.engine import trainer
from fgir.engine.checkpoint import CheckpointError, load_checkpoint
from fgir.engine.trainer import check_before_work, init_weights_from, train


def corrupt(config, split: str, indices: list[int]) -> list[str]:
    """Overwrite some images of a split with bytes no decoder reads; returns their paths."""
    ensure_synthetic(config.data)
    paths = build_dataset(config.data, split, None).paths
    for index in indices:
        Path(paths[index]).write_bytes(b"not an image")
    return [paths[i] for i in indices]


def test_with_on_error_skip_unreadable_images_are_left_out_and_listed(tiny_config, capsys):
    config = tiny_config("train.run_name=r", "data.on_error=skip", "data.num_workers=2")
    bad_indices = [0, 5, 11]
    bad_train = dict(zip(bad_indices, corrupt(config, "train", bad_indices), strict=True))
    bad_test = corrupt(config, "test", [4])
    result = train(config, progress=False)
    rows = json.loads((result.run_dir / "metrics.json").read_text())
    listed = json.loads((result.run_dir / "skipped_images.json").read_text())
    for epoch, row in enumerate(rows):
        # 18 images at batch 4: the first 16 of the epoch's order are trained on, the last 2 dropped.
        sampler = EpochSampler(18, seed=config.train.seed, shuffle=True)
        sampler.set_epoch(epoch)
        used = [index for index, _ in list(sampler)[:16]]
        expected = sorted(path for index, path in bad_train.items() if index in used)
        assert row["skipped_images"] == len(expected)
        assert sorted(m.split("cannot read image ")[1].split(":")[0] for m in listed.get(str(epoch + 1), [])) == expected
    assert result.test_metrics["num_samples"] == 8  # 9 test images, one unreadable
    assert [m.split("cannot read image ")[1].split(":")[0] for m in result.test_metrics["skipped_images"]] == bad_test
    assert "test: 1 unreadable images skipped, 8 scored" in capsys.readouterr().out


def test_by_default_an_unreadable_image_stops_training_naming_it(tiny_config):
    config = tiny_config("train.run_name=r", "train.epochs=1")
    bad = corrupt(config, "train", list(range(18)))  # whichever batch comes first
    with pytest.raises(ImageReadError, match=f"cannot read image {Path(bad[0]).parents[1]}/.*: UnidentifiedImageError"):
        train(config, progress=False)


class WithAuxiliaryLoss(nn.Module):
    """A model with an extra parameter that only the extra loss reaches, and a frozen part."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.extra = nn.Parameter(torch.zeros(()))
        self.calls = 0
        next(inner.parameters()).requires_grad_(False)

    def forward(self, images):
        return self.inner(images)

    def extra_loss(self, logits, targets):
        self.calls += 1
        return (self.extra - 1.0) ** 2


def test_the_extra_loss_trains_and_frozen_parameters_are_reported_and_kept(tiny_config, monkeypatch, capsys):
    built = []

    def build(*args, **kwargs):
        built.append(WithAuxiliaryLoss(trainer_build(*args, **kwargs)))
        return built[-1]

    trainer_build = trainer.build_model
    monkeypatch.setattr(trainer, "build_model", build)
    config = tiny_config("train.run_name=r", "train.epochs=1", "data.val=null", "data.test=null")
    torch.manual_seed(config.train.seed)
    frozen_before = next(trainer_build(config.model, 3, config.data.image_size).parameters()).clone()
    result = train(config, progress=False)
    model = built[0]
    assert model.calls == 4  # once per training forward
    assert 0 < model.extra.item() <= 1  # only the extra loss gives it a gradient
    state = load_checkpoint(result.run_dir / "checkpoints" / "last.safetensors").model_state
    frozen_name = next(name for name, p in model.named_parameters() if not p.requires_grad)
    assert torch.equal(state[frozen_name], frozen_before)  # the optimizer never saw it
    report = json.loads((result.run_dir / "trainable_params.json").read_text())
    total = sum(p.numel() for p in model.parameters())
    assert (report["trainable"], report["total"]) == (total - frozen_before.numel(), total)
    assert f"of {total:,}" in capsys.readouterr().out  # printed because part of the model is frozen


def test_init_from_needs_the_same_classes_unless_a_new_head_is_asked_for(tiny_config, tmp_path):
    source = train(tiny_config("train.run_name=src", "train.epochs=1", "data.val=null", "data.test=null"),
                   progress=False)
    four = tiny_config("train.run_name=dst", "data.synthetic.num_classes=4", f"data.root={tmp_path / 'four'}",
                       f"train.init_from={source.run_dir}")
    with pytest.raises(CheckpointError, match=r"other shape: head\.weight .*, head\.bias \(checkpoint \(3,\), model \(4,\)\)"
                                              r".*set train.init_new_head=true"):
        train(four, progress=False)
    torch.manual_seed(0)
    net = trainer.build_model(four.model, 4, four.data.image_size)
    fresh_head = {k: v.clone() for k, v in net.state_dict().items() if k.startswith("head.")}
    assert init_weights_from(net, str(source.run_dir), new_head=True) == sorted(fresh_head)
    theirs = load_checkpoint(source.run_dir / "checkpoints" / "last.safetensors").model_state
    for key, value in net.state_dict().items():
        assert torch.equal(value, fresh_head[key] if key in fresh_head else theirs[key]), key


def test_patch_checks_happen_before_any_work(tiny_config):
    # 32 px with 8 px patches: a 4x4 grid of 16 patches.
    check_before_work(tiny_config("model.method=glsim", "model.glsim.top_o=16"))
    with pytest.raises(ConfigError, match=r"model.glsim.top_o=17 is larger than the number of patches \(32/8\)\^2 = 16"):
        train(tiny_config("model.method=glsim", "model.glsim.top_o=17"), progress=False)
    with pytest.raises(ConfigError, match="data.image_size=36 is not divisible by the patch size 8x8"):
        check_before_work(tiny_config("data.image_size=36"))
    with pytest.raises(ConfigError, match="model.backbone='vit_tiny_patch16_224' .* cannot be built"):
        check_before_work(tiny_config("model.backbone_args.no_such_argument=1"))
    with pytest.raises(ConfigError, match="config key 'model.backbone': unknown timm model 'vit_nonexistent'"):
        tiny_config("model.backbone=vit_nonexistent")  # refused as the config loads
