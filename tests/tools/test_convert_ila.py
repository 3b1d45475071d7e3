"""Converter from the ILA paper's release files (arXiv 2409.11051): tiny checkpoints in the naming of
the reference's ViT with DS-ILAs (arkel23/DownSamplingInterLayerAdapter, modules_others/adapters.py
ILAdapter + transformer.py, saved through the `.model` wrapper) convert to fgir's ila / ila_plus /
ila_pp and compute what the reference forward, written here from its code, computes."""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import pytest
import reference_vit as ref
import torch
import torch.nn.functional as F

from fgir.cli import main
from fgir.engine.checkpoint import CheckpointError, load_checkpoint, restore_model
from fgir.tools.convert_ila import convert_ila_reference
from fgir.tools.reference_release import ConversionError

# Three blocks: a block after each tested ILA, since the head reads only the CLS token, whose ILA
# path does not see the patches.
DIM, DEPTH, HEADS, PATCH, IMAGE, FF, CLASSES, BOTTLENECK = 32, 3, 2, 8, 40, 64, 5, 4
BN_EPS = 1e-5


def batch_norm_state(prefix: str, channels: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Affine parameters and running statistics far from their defaults, so each one matters."""
    return {
        f"{prefix}.weight": 1 + ref.randn(gen, channels, scale=0.3),
        f"{prefix}.bias": ref.randn(gen, channels, scale=0.3),
        f"{prefix}.running_mean": ref.randn(gen, channels, scale=0.5),
        f"{prefix}.running_var": 0.5 + torch.rand(channels, generator=gen),
        f"{prefix}.num_batches_tracked": torch.tensor(123),
    }


def ila_state(prefix: str, downsample: bool, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """One ILAdapter with the paper's settings: BN after the down-projection, depthwise 3x3 conv + BN +
    GELU + pointwise conv, a 1x1 conv for the CLS token, BN before the up-projection; a DS-ILA's
    residual goes through a depthwise 3x3 conv without bias."""
    d = BOTTLENECK
    state = {
        **ref.linear_state(f"{prefix}.adapter_down", DIM, d, gen),
        **batch_norm_state(f"{prefix}.norm1.1", d, gen),
        f"{prefix}.adapter_conv.0.weight": ref.randn(gen, d, 1, 3, 3, scale=0.5),
        f"{prefix}.adapter_conv.0.bias": ref.randn(gen, d),
        **batch_norm_state(f"{prefix}.adapter_conv.1.0", d, gen),
        f"{prefix}.adapter_conv.2.weight": ref.randn(gen, d, d, 1, 1, scale=0.5),
        f"{prefix}.adapter_conv.2.bias": ref.randn(gen, d),
        f"{prefix}.adapter_cls.weight": ref.randn(gen, d, d, 1, 1, scale=0.5),
        f"{prefix}.adapter_cls.bias": ref.randn(gen, d),
        **batch_norm_state(f"{prefix}.norm3.1", d, gen),
        # A large up-projection, so that the adapter branch weighs in the logits well above the tolerance.
        f"{prefix}.adapter_up.weight": ref.randn(gen, DIM, d, scale=1.0),
        f"{prefix}.adapter_up.bias": ref.randn(gen, DIM),
    }
    if downsample:
        state[f"{prefix}.ds_conv.weight"] = 1 + ref.randn(gen, DIM, 1, 3, 3)
    return state


def reference_state(ds_locs: list[int], same_locs: list[int], adapters: bool, seed: int = 0) -> dict:
    """The reference ViT's state_dict (without the `model.` prefix), random values."""
    gen = torch.Generator().manual_seed(seed)
    state = {**ref.embedding_state(DIM, PATCH, IMAGE, gen), **ref.linear_state("head.head", DIM, CLASSES, gen)}
    for i in range(DEPTH):
        state.update(ref.block_state(f"encoder.blocks.{i}", DIM, FF, gen))
        if adapters:
            for site in ("adapter_attn", "adapter_pwffn"):
                state.update(ref.linear_state(f"encoder.blocks.{i}.{site}.adapter_down", DIM, BOTTLENECK, gen))
                state.update(ref.linear_state(f"encoder.blocks.{i}.{site}.adapter_up", BOTTLENECK, DIM, gen))
    for j in range(len(ds_locs)):
        state.update(ila_state(f"encoder.ila_ds.{j}", True, gen))
    for j in range(len(same_locs)):
        state.update(ila_state(f"encoder.ila.{j}", False, gen))
    return state


def release_args(**changes: object) -> argparse.Namespace:
    """The Namespace the reference trainer saves (after its build_args and model config wrote back)."""
    args = argparse.Namespace(
        model_name="vit_b16", dataset_name="soyageing", image_size=IMAGE, num_classes=CLASSES,
        custom_mean_std=False, resize_size=53, test_resize_size=53, test_resize_directly=False,
        classifier="cls", dynamic_anchor=False, selector=None, prompt=None, encoder_norm=True,
        pos_embedding_type="learned", hidden_size=DIM, num_attention_heads=HEADS, intermediate_size=FF,
        num_hidden_layers=DEPTH, hidden_dropout_prob=0.1, freeze_backbone=True, unfreeze_cls=True,
        adapter=None, adapter_dim=BOTTLENECK, adapter_kernel_size=3, adapter_path="convpass",
        ila=True, ila_locs=[], ila_ds_locs=[0], ila_cls_conv=True, ila_ds_conv=True,
        ila_ds_conv_type="dws_near_ones_init", ila_ds_kernel_size=3, ila_norm1="bn", ila_norm2="bn",
        ila_norm3="bn", ila_padding=False, ila_dilation=1, ila_dws_conv_groups=1, ila_sd=0.0, device="cpu",
    )
    vars(args).update(changes)
    return args


# --- the reference forward, written from its code --------------------------------------------------


def batch_norm(state: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    """Evaluation-mode BatchNorm over dim 1 (the reference's BN1d sees (B, d, S), BN2d (B, d, h, w))."""
    return F.batch_norm(x, state[f"{name}.running_mean"], state[f"{name}.running_var"],
                        state[f"{name}.weight"], state[f"{name}.bias"], training=False, eps=BN_EPS)


def reference_ila(state: dict, p: str, x: torch.Tensor, downsample: bool) -> torch.Tensor:
    """ILAdapter.forward in evaluation mode, on (B, 1 + h*h, D) with a CLS token."""
    h = ref.linear(state, f"{p}.adapter_down", x)
    h = F.gelu(batch_norm(state, f"{p}.norm1.1", h.transpose(1, 2)).transpose(1, 2))
    b, s, d = h.shape
    side = int(math.sqrt(s))
    cls = F.conv2d(h[:, :1].transpose(1, 2)[..., None], state[f"{p}.adapter_cls.weight"], state[f"{p}.adapter_cls.bias"])
    patches = h[:, 1:].transpose(1, 2).reshape(b, d, side, side)
    padding = 0 if downsample else 1  # ila_padding=False for DS-ILAs; same-resolution ILAs pad
    patches = F.conv2d(patches, state[f"{p}.adapter_conv.0.weight"], state[f"{p}.adapter_conv.0.bias"],
                       padding=padding, groups=d)
    patches = F.gelu(batch_norm(state, f"{p}.adapter_conv.1.0", patches))
    patches = F.conv2d(patches, state[f"{p}.adapter_conv.2.weight"], state[f"{p}.adapter_conv.2.bias"])
    h = torch.cat([cls.flatten(2), patches.flatten(2)], dim=2)  # (B, d, S')
    h = ref.linear(state, f"{p}.adapter_up", F.gelu(batch_norm(state, f"{p}.norm3.1", h)).transpose(1, 2))
    residual = x
    if downsample:
        grid = x[:, 1:].transpose(1, 2).reshape(b, x.shape[2], side, side)
        grid = F.conv2d(grid, state[f"{p}.ds_conv.weight"], groups=x.shape[2])
        residual = torch.cat([x[:, :1], grid.flatten(2).transpose(1, 2)], dim=1)
    return residual + h


def adapter(state: dict, p: str, h: torch.Tensor) -> torch.Tensor:
    return ref.linear(state, f"{p}.adapter_up", F.gelu(ref.linear(state, f"{p}.adapter_down", h)))


def block_with_adapters(state: dict, p: str, x: torch.Tensor) -> torch.Tensor:
    """BlockVanilla on the `convpass` path: adapters beside attention and MLP read the normed tokens."""
    h = ref.layer_norm(state, f"{p}.norm1", x)
    x = x + ref.attention(state, p, h, HEADS) + adapter(state, f"{p}.adapter_attn", h)
    h = ref.layer_norm(state, f"{p}.norm2", x)
    return x + ref.mlp(state, p, h) + adapter(state, f"{p}.adapter_pwffn", h)


def reference_forward(state: dict, images: torch.Tensor, ds_locs: list[int], same_locs: list[int],
                      adapters: bool) -> torch.Tensor:
    x = ref.embed(state, images, PATCH)
    level_same = level_ds = 0
    for i in range(DEPTH):
        p = f"encoder.blocks.{i}"
        x = block_with_adapters(state, p, x) if adapters else ref.block(state, p, x, HEADS)
        if i in same_locs:
            x = reference_ila(state, f"encoder.ila.{level_same}", x, downsample=False)
            level_same += 1
        elif i in ds_locs:
            x = reference_ila(state, f"encoder.ila_ds.{level_ds}", x, downsample=True)
            level_ds += 1
    return ref.linear(state, "head.head", ref.layer_norm(state, "encoder_norm", x)[:, 0])


# --- tests ------------------------------------------------------------------------------------------

# (method, ila_ds_locs, ila_locs as saved, the blocks with same-resolution ILAs, in-block adapters)
CASES = {
    "ila": ("ila", [0], [], [], False),
    "ila-two-ds-unsorted": ("ila", [1, 0], [], [], False),
    "ila_plus": ("ila_plus", [0], [1], [1], False),
    "ila_plus-every-other-block": ("ila_plus", [0], [-1], [1, 2], False),
    "ila_pp": ("ila_pp", [0], [], [], True),
}


@pytest.mark.parametrize("case", CASES)
def test_converted_model_computes_the_reference_forward(tmp_path: Path, case: str) -> None:
    method, ds_locs, saved_locs, same_locs, adapters = CASES[case]
    state = reference_state(ds_locs, same_locs, adapters)
    args = release_args(ila_ds_locs=ds_locs, ila_locs=saved_locs, adapter="adapter" if adapters else None)
    out = convert_ila_reference(ref.write_release(tmp_path / "release.pth", state, args), tmp_path / "ila.safetensors")
    model, checkpoint = restore_model(out)
    assert checkpoint.config.model.method == method
    assert checkpoint.config.model.peft.ila_ds_layers == sorted(ds_locs)
    assert checkpoint.config.model.peft.bottleneck == BOTTLENECK
    images = torch.randn(3, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(images)
    expected = reference_forward(state, images, ds_locs, same_locs, adapters)
    assert logits.shape == (3, CLASSES) and expected.std() > 0.1  # a real head, not near zero
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)


def test_the_ila_weights_land_in_place(tmp_path: Path) -> None:
    state = reference_state([0], [1], False)
    args = release_args(ila_locs=[1])
    model, _ = restore_model(convert_ila_reference(ref.write_release(tmp_path / "r.pth", state, args)))
    own = model.state_dict()
    assert torch.equal(own["inter_layer.0.residual_conv.weight"], state["encoder.ila_ds.0.ds_conv.weight"])
    assert torch.equal(own["inter_layer.0.norm_conv.running_var"], state["encoder.ila_ds.0.adapter_conv.1.0.running_var"])
    assert torch.equal(own["inter_layer.1.prefix_proj.weight"], state["encoder.ila.0.adapter_cls.weight"][:, :, 0, 0])
    assert torch.equal(own["inter_layer.1.norm_down.running_mean"], state["encoder.ila.0.norm1.1.running_mean"])
    assert "inter_layer.1.residual_conv.weight" not in own
    qkv = torch.cat([state[f"encoder.blocks.1.attn.proj_{n}.bias"] for n in "qkv"])
    assert torch.equal(own["backbone.vit.blocks.1.attn.qkv.bias"], qkv)
    assert torch.equal(own["head.weight"], state["head.head.weight"])


def test_saved_config_has_the_reference_test_transform(tmp_path: Path) -> None:
    args = release_args(dataset_name="cub", custom_mean_std=True, test_resize_size=None, resize_size=None)
    checkpoint = load_checkpoint(convert_ila_reference(ref.write_release(tmp_path / "r.pth", reference_state([0], [], False), args)))
    data = checkpoint.config.data
    assert data.image_size == IMAGE and data.resize_ratio == int(IMAGE * 1.34) / IMAGE and data.test_resize == "crop"
    assert data.interpolation == "bicubic" and data.transform_backend == "pil" and data.fast_decode is False
    assert data.mean == [0.3659524, 0.42010019, 0.41562049] and data.std == [0.07625843, 0.04599726, 0.06182727]
    assert checkpoint.config.model.backbone_args == {"embed_dim": DIM, "depth": DEPTH, "num_heads": HEADS,
                                                     "patch_size": PATCH, "mlp_ratio": FF / DIM}
    assert checkpoint.epoch == 7 and checkpoint.metrics == {"reference_accuracy": 91.5}


def test_cli_converts_to_the_named_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = ref.write_release(tmp_path / "r.pth", reference_state([0], [], True), release_args(adapter="adapter"))
    assert main(["convert", "ila-reference", str(src), str(tmp_path / "out.safetensors"), "--num-classes", "5"]) == 0
    assert f"checkpoint:   {tmp_path / 'out.safetensors'}" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "out.safetensors").config.model.method == "ila_pp"


def test_missing_and_unexpected_keys_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    state = reference_state([0], [], False)
    del state["encoder.ila_ds.0.norm3.1.running_var"]
    state["encoder.ila_ds.0.extra.weight"] = torch.zeros(1)
    src = ref.write_release(tmp_path / "r.pth", state, release_args())
    with pytest.raises(CheckpointError) as err:
        convert_ila_reference(src, tmp_path / "out.safetensors")
    assert str(src) in str(err.value)
    assert "inter_layer.0.norm_up.running_var" in str(err.value)
    assert "encoder.ila_ds.0.extra.weight" in str(err.value)
    assert main(["convert", "ila-reference", str(src), str(tmp_path / "out.safetensors")]) == 2
    assert "encoder.ila_ds.0.extra.weight" in capsys.readouterr().err
    assert not (tmp_path / "out.safetensors").exists()


def test_a_glsim_release_is_not_an_ila_release(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    state = {key: value for key, value in reference_state([0], [], False).items() if "ila" not in key}
    src = ref.write_release(tmp_path / "glsim.pth", state, release_args(dynamic_anchor=True))
    assert main(["convert", "ila-reference", str(src)]) == 2
    err = capsys.readouterr().err
    assert f"{src}: not an ILA release: its state_dict has no inter-layer adapter weights" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("change, message", [
    ({"ila_dws_conv_groups": 2}, "ila_dws_conv_groups=2 (need 1)"),
    ({"ila_ds_conv_type": "avg_pool"}, "ila_ds_conv_type='avg_pool' (need 'dws_near_ones_init' or 'dws_ones_init')"),
    ({"adapter": "convpass"}, "adapter='convpass' (need 'adapter')"),
    ({"ila_ds_locs": [0, 1]}, "config ila_ds_locs=[0, 1] places 2 modules, the state_dict holds 1"),
    ({"ila_locs": [1], "adapter": "adapter"}, "no fgir method has both"),
])
def test_unsupported_settings_are_refused(tmp_path: Path, change: dict, message: str) -> None:
    src = ref.write_release(tmp_path / "r.pth", reference_state([0], [], False), release_args(**change))
    with pytest.raises(ConversionError, match=re.escape(message)):
        convert_ila_reference(src, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
