import random

import numpy as np
import pytest
import torch
from torch import nn

from conftest import tiny_backbone
from fgir.config import load_config, to_dict
from fgir.engine.checkpoint import CheckpointError, load_checkpoint, load_model_state, save_checkpoint
from fgir.engine.rng import rng_state, set_rng_state
from fgir.engine.state_io import flatten, unflatten


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def trained_optimizer(model):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    return optimizer


def test_save_load_is_bit_identical_with_config_and_class_names(tmp_path):
    model, config = small_model(), load_config(None, ["train.lr=0.05"])
    path = save_checkpoint(tmp_path / "best.safetensors", model, config, ["a", "b", "c"], epoch=3, global_step=30,
                           metrics={"val": {"top1": 50.0}})
    ckpt = load_checkpoint(path)
    assert ckpt.class_names == ["a", "b", "c"] and (ckpt.epoch, ckpt.global_step) == (3, 30)
    assert to_dict(ckpt.config) == to_dict(config) and ckpt.metrics["val"]["top1"] == 50.0
    for key, value in model.state_dict().items():
        assert torch.equal(ckpt.model_state[key], value)
    assert ckpt.train_state is None
    assert [p.name for p in tmp_path.iterdir()] == ["best.safetensors"]  # nothing half-written left


def test_training_state_round_trips_without_pickle(tmp_path):
    model = small_model()
    optimizer = trained_optimizer(model)
    state = {"optimizer": optimizer.state_dict(), "rng": rng_state(), "best_top1": 12.5}
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    path = save_checkpoint(tmp_path / "last.safetensors", model, load_config(), ["a", "b", "c"], epoch=1,
                           global_step=1, train_state=state)
    restored = load_checkpoint(path, with_train_state=True).train_state
    fresh = torch.optim.SGD(small_model().parameters(), lr=0.1, momentum=0.9, nesterov=True)
    fresh.load_state_dict(restored["optimizer"])
    for key, buf in optimizer.state_dict()["state"].items():
        assert torch.equal(fresh.state_dict()["state"][key]["momentum_buffer"], buf["momentum_buffer"])
    assert restored["best_top1"] == 12.5
    # Restoring the RNG state replays the same random numbers in python, numpy and torch.
    set_rng_state(restored["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_flatten_keeps_types_that_json_would_lose():
    tree = {"a": (1, 2.5, None), 3: [torch.arange(3)], "s": "x"}
    tensors = {}
    back = unflatten(flatten(tree, "root", tensors), tensors)
    assert back["a"] == (1, 2.5, None) and back["s"] == "x" and torch.equal(back[3][0], torch.arange(3))
    with pytest.raises(TypeError, match="root/x"):
        flatten({"x": object()}, "root", {})


def test_a_foreign_file_is_refused_with_its_name(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="foreign.safetensors: not an fgir checkpoint"):
        load_checkpoint(tmp_path / "foreign.safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.safetensors: unreadable"):
        load_checkpoint(tmp_path / "garbage.safetensors")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_best_only_checkpoint_cannot_be_resumed(tmp_path):
    path = save_checkpoint(tmp_path / "best.safetensors", small_model(), load_config(), ["a"], epoch=1, global_step=1)
    with pytest.raises(CheckpointError, match="holds no training state"):
        load_checkpoint(path, with_train_state=True)


def test_a_model_of_another_shape_gets_a_readable_error():
    state = small_model().state_dict()
    other = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 5))
    with pytest.raises(CheckpointError, match=r"ckpt does not fit the model: 0 missing, 0 unexpected and 2 mismatched "
                       r"keys\n  other shape: 2.weight \(checkpoint \(3, 8\), model \(5, 8\)\), "
                       r"2.bias \(checkpoint \(3,\), model \(5,\)\)$"):
        load_model_state(other, state, "ckpt")
    with pytest.raises(CheckpointError, match="2 missing, 0 unexpected and 0 mismatched keys\n  missing: 3.weight, 3.bias$"):
        load_model_state(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3), nn.Linear(3, 3)), state, "ckpt")


def test_a_vit_checkpoint_of_another_size_says_what_it_holds():
    narrow, wide = tiny_backbone(), tiny_backbone(embed_dim=48, depth=3)
    with pytest.raises(CheckpointError) as err:
        load_model_state(wide, narrow.state_dict(), "ckpt")
    lines = str(err.value).splitlines()
    third_block = [key for key in wide.state_dict() if key.startswith("vit.blocks.2.")]
    assert lines[0].startswith(f"ckpt does not fit the model: {len(third_block)} missing, 0 unexpected and ")
    assert lines[-1] == ("  the checkpoint holds a ViT of width 32, depth 2, patch 8x8, MLP ratio 4, a CLS token, "
                         "a 4x4 position grid (32x32 px images); the model is a ViT of width 48, depth 3, patch "
                         "8x8, MLP ratio 4, a CLS token, a 4x4 position grid (32x32 px images)")
