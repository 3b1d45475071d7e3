"""Weights that do not fit the recipe's backbone: a few lines that count what differs, name the first
keys, say what the file holds (from its tensor shapes) and how to build a model it fits, instead of
torch's one line per tensor."""

import timm
import torch

from conftest import TINY, save_random_vit, tiny_overrides
from fgir import cli
from fgir.models.weights import InvalidWeightsError, create_vit


def headless_shapes(name: str, **model_args) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=0, img_size=32, **model_args)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def load_error(name: str, weights, **model_args) -> str:
    try:
        create_vit(name, pretrained=True, weights=weights, img_size=32, **model_args)
    except InvalidWeightsError as err:
        return str(err)
    raise AssertionError("the weights loaded")


def test_weights_of_another_timm_vit_name_that_vit(tmp_path):
    path = tmp_path / "tiny.safetensors"
    state = save_random_vit(path)
    model = headless_shapes("vit_small_patch16_224")
    differing = [key for key in model if tuple(state[key].shape) != model[key]]
    assert state.keys() == model.keys() and differing  # same keys, other widths

    message = load_error("vit_small_patch16_224", path)
    lines = message.splitlines()
    assert lines[0] == (f"weights file {path} does not fit vit_small_patch16_224 (model.backbone): "
                        f"0 missing, 0 unexpected and {len(differing)} mismatched keys")
    first = ", ".join(f"{key} (file {tuple(state[key].shape)}, model {model[key]})" for key in differing[:3])
    assert lines[1] == f"  other shape: {first} and {len(differing) - 3} more"
    # What the file's shapes say: vit_tiny is 192 wide, 12 blocks, 16 px patches; at 32 px a 2x2 grid.
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32)
    assert lines[2] == (f"  the file holds a ViT of width {vit.embed_dim}, depth {len(vit.blocks)}, patch 16x16, "
                        "MLP ratio 4, a CLS token, a 2x2 position grid (32x32 px images)")
    assert lines[3].startswith("  fix: model.backbone=vit_tiny_patch16_224")
    assert len(lines) == 4


def test_the_suggested_backbone_loads_the_file(tmp_path):
    path = tmp_path / "tiny.safetensors"
    state = save_random_vit(path)
    suggested = load_error("vit_small_patch16_224", path).splitlines()[-1].split("model.backbone=")[1].split()[0]
    vit = create_vit(suggested, pretrained=True, weights=path, img_size=32)
    assert all(torch.equal(vit.state_dict()[key], value) for key, value in state.items())


def test_shapes_no_timm_model_has_get_the_backbone_args_that_rebuild_them(tmp_path):
    path = tmp_path / "small.safetensors"
    save_random_vit(path, **TINY)  # 32 wide, 2 blocks, 8 px patches
    message = load_error("vit_tiny_patch16_224", path, **{**TINY, "embed_dim": 48})
    assert "does not fit vit_tiny_patch16_224 with model.backbone_args {'patch_size': 8, 'embed_dim': 48" in message
    assert "the file holds a ViT of width 32, depth 2, patch 8x8" in message
    assert ("no timm model has these shapes; fix: model.backbone_args={patch_size: 8, embed_dim: 32, depth: 2, "
            "num_heads: H} with H the file's number of attention heads") in message
    suggested = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2)
    create_vit("vit_tiny_patch16_224", pretrained=True, weights=path, img_size=32, **suggested)  # loads


def test_train_prints_a_short_summary_and_exits_2(tmp_path, capsys):
    """The issue's case through the CLI: the file is a plain vit_tiny_patch16_224, the recipe shrinks
    that model with backbone_args; the fix names the timm model and the arguments to drop."""
    path = tmp_path / "tiny.safetensors"
    save_random_vit(path)
    status = cli.main(["train", *tiny_overrides(tmp_path, "model.pretrained=true", f"model.weights={path}"),
                       "--no-progress"])
    # The tiny run's warm-up warning comes first; the error is what follows it.
    err = "".join(line for line in capsys.readouterr().err.splitlines(keepends=True)
                  if not line.startswith("warning: the warm-up"))
    assert status == 2
    assert err.startswith(f"fgir train: error: weights file {path} does not fit vit_tiny_patch16_224 with "
                          "model.backbone_args")
    assert ("fix: model.backbone=vit_tiny_patch16_224, without model.backbone_args "
            "['depth', 'embed_dim', 'num_heads', 'patch_size']") in err
    assert len(err.splitlines()) <= 6 and "size mismatch for" not in err and "Traceback" not in err
