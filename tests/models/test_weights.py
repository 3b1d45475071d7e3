"""Weight sources: every supported file layout and the hub cache load back bit-identical weights through
timm's loader, position embeddings are resampled to a new image size, and weights that cannot be
had fail fast with one error that says what was tried and what to do."""

import os

import huggingface_hub
import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from huggingface_hub import constants as hub_constants
from timm.layers import resample_abs_pos_embed

from fgir.errors import FgirError
from fgir.models.weights import (
    InvalidWeightsError,
    ModelNameError,
    UnsafeWeightsError,
    WeightsNotFoundError,
    create_vit,
)

NAME = "vit_tiny_patch16_224"
TINY = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2)
# The smallest ViT timm registers hub weights for (306 K parameters, a 1000-class head).
HUB_NAME = "test_vit.r160_in1k"


def randomized(vit):
    """Random values in every tensor (timm starts norms at 1 and biases at 0), so a tensor that is not
    loaded, or loaded into the wrong place, shows in the comparison."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in vit.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.2)
    return vit.eval()


def tiny_vit(img_size=32, **overrides):
    return randomized(create_vit(NAME, pretrained=False, img_size=img_size, **{**TINY, **overrides}))


def assert_same_model(loaded, original, img_size=32):
    assert loaded.state_dict().keys() == original.state_dict().keys()
    for key, tensor in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    images = torch.randn(2, 3, img_size, img_size, generator=torch.Generator().manual_seed(1))
    assert torch.equal(loaded.eval()(images), original(images))


def save_google_npz(vit, path):
    """Write `vit` in Google's original ViT layout: the inverse of timm's `_load_weights`."""
    heads = vit.blocks[0].attn.num_heads
    dim = vit.embed_dim

    def qkv_kernels(weight):  # torch (out, in) -> JAX (in, heads, head_dim)
        return [part.T.reshape(dim, heads, -1) for part in weight.chunk(3)]

    arrays = {
        "embedding/kernel": vit.patch_embed.proj.weight.permute(2, 3, 1, 0),  # OIHW -> HWIO
        "embedding/bias": vit.patch_embed.proj.bias,
        "cls": vit.cls_token,
        "Transformer/posembed_input/pos_embedding": vit.pos_embed,
        "Transformer/encoder_norm/scale": vit.norm.weight,
        "Transformer/encoder_norm/bias": vit.norm.bias,
    }
    for i, block in enumerate(vit.blocks):
        prefix = f"Transformer/encoderblock_{i}/"
        attention = prefix + "MultiHeadDotProductAttention_1/"
        kernels = qkv_kernels(block.attn.qkv.weight)
        biases = block.attn.qkv.bias.chunk(3)
        for j, kind in enumerate(("query", "key", "value")):
            arrays[f"{attention}{kind}/kernel"] = kernels[j]
            arrays[f"{attention}{kind}/bias"] = biases[j].reshape(heads, -1)
        arrays[f"{attention}out/kernel"] = block.attn.proj.weight.reshape(dim, heads, -1).permute(1, 2, 0)
        arrays[f"{attention}out/bias"] = block.attn.proj.bias
        arrays[prefix + "LayerNorm_0/scale"] = block.norm1.weight
        arrays[prefix + "LayerNorm_0/bias"] = block.norm1.bias
        arrays[prefix + "LayerNorm_2/scale"] = block.norm2.weight
        arrays[prefix + "LayerNorm_2/bias"] = block.norm2.bias
        for r, fc in enumerate((block.mlp.fc1, block.mlp.fc2)):
            arrays[f"{prefix}MlpBlock_3/Dense_{r}/kernel"] = fc.weight.T
            arrays[f"{prefix}MlpBlock_3/Dense_{r}/bias"] = fc.bias
    np.savez(path, **{key: value.detach().numpy() for key, value in arrays.items()})


def save(vit, layout, tmp_path):
    """Write `vit`'s weights in `layout`; return what to pass as `weights`."""
    state_dict = vit.state_dict()
    if layout == "safetensors":
        safetensors.torch.save_file(state_dict, tmp_path / "vit.safetensors")
        return tmp_path / "vit.safetensors"
    if layout == "pth":
        torch.save(state_dict, tmp_path / "vit.pth")
        return tmp_path / "vit.pth"
    if layout == "pth_wrapped_model":
        torch.save({"model": state_dict, "epoch": 3}, tmp_path / "vit.pth")
        return tmp_path / "vit.pth"
    if layout == "bin_wrapped_state_dict":
        torch.save({"state_dict": state_dict}, tmp_path / "vit.bin")
        return tmp_path / "vit.bin"
    if layout == "npz":
        save_google_npz(vit, tmp_path / "vit.npz")
        return tmp_path / "vit.npz"
    folder = tmp_path / "snapshot"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    if layout == "folder_safetensors":
        safetensors.torch.save_file(state_dict, folder / "model.safetensors")
    elif layout == "folder_bin":
        torch.save(state_dict, folder / "pytorch_model.bin")
    elif layout == "folder_single_file":
        torch.save(state_dict, folder / "finetuned.pth")
    return folder


LAYOUTS = [
    "safetensors",
    "pth",
    "pth_wrapped_model",
    "bin_wrapped_state_dict",
    "npz",
    "folder_safetensors",
    "folder_bin",
    "folder_single_file",
]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_saved_weights_load_back_identical(layout, tmp_path):
    original = tiny_vit()
    weights = save(original, layout, tmp_path)
    loaded = create_vit(NAME, pretrained=True, weights=str(weights), img_size=32, **TINY)
    assert_same_model(loaded, original)


def test_head_in_the_file_is_dropped_and_the_rest_loads_strictly(tmp_path):
    with_head = randomized(timm.create_model(NAME, num_classes=7, img_size=32, **TINY))
    safetensors.torch.save_file(with_head.state_dict(), tmp_path / "vit.safetensors")
    loaded = create_vit(NAME, pretrained=True, weights=tmp_path / "vit.safetensors", img_size=32, **TINY)
    assert isinstance(loaded.head, torch.nn.Identity)
    with_head.reset_classifier(0)
    assert_same_model(loaded, with_head)


@pytest.mark.parametrize(
    "layout, interpolation, antialias", [("safetensors", "bicubic", True), ("npz", "bilinear", False)]
)
def test_position_embedding_resampled_to_a_larger_image(layout, interpolation, antialias, tmp_path):
    original = tiny_vit(img_size=32)
    weights = save(original, layout, tmp_path)
    loaded = create_vit(NAME, pretrained=True, weights=weights, img_size=64, **TINY)
    # timm's checkpoint filter resamples bicubic with antialiasing; its JAX loader bilinear without.
    expected = resample_abs_pos_embed(
        original.pos_embed.detach(),
        new_size=(8, 8),
        old_size=(4, 4),
        num_prefix_tokens=1,
        interpolation=interpolation,
        antialias=antialias,
    )
    assert loaded.pos_embed.shape == (1, 1 + 8 * 8, 32)
    assert torch.equal(loaded.pos_embed, expected)
    for key, tensor in original.state_dict().items():
        if key != "pos_embed":
            assert torch.equal(loaded.state_dict()[key], tensor), key


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache. huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE once, at
    import, into its `constants`; patching those is what setting the variables before start does."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def unreachable_hub(monkeypatch):
    # Nothing listens on port 1: every request to the "hub" fails at once.
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "ENDPOINT", "http://127.0.0.1:1")


def populate(cache, model):
    """Lay out `model`'s weights the way huggingface_hub caches timm/<HUB_NAME>."""
    repo = cache / f"models--timm--{HUB_NAME}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    safetensors.torch.save_file(model.state_dict(), repo / "snapshots" / commit / "model.safetensors")


@pytest.mark.parametrize("network", ["offline", "unreachable_hub"])
@pytest.mark.timeout(60)
def test_pretrained_from_a_populated_hub_cache(network, hub_cache, request):
    request.getfixturevalue(network)
    published = randomized(timm.create_model(HUB_NAME))  # as on the hub: with its 1000-class head
    populate(hub_cache, published)
    loaded = create_vit(HUB_NAME, pretrained=True, img_size=160)
    published.reset_classifier(0)
    assert_same_model(loaded, published, img_size=160)


@pytest.mark.timeout(60)
def test_unreachable_hub_weights_fail_with_the_sources_tried(hub_cache, offline):
    with pytest.raises(WeightsNotFoundError) as failure:
        create_vit(HUB_NAME, pretrained=True, img_size=160)
    message = str(failure.value)
    assert f"hub repo timm/{HUB_NAME}: skipped (HF_HUB_OFFLINE is set)" in message
    assert f"hub cache at {hub_cache}: not present" in message
    assert "model.weights=" in message and "HF_HOME" in message


@pytest.mark.timeout(60)
def test_network_failure_is_reported_without_retrying(hub_cache, unreachable_hub):
    with pytest.raises(WeightsNotFoundError, match=rf"hub repo timm/{HUB_NAME}: network unreachable"):
        create_vit(HUB_NAME, pretrained=True, img_size=160)


def test_model_without_hub_weights_says_where_to_get_them():
    with pytest.raises(WeightsNotFoundError, match=r"no Hugging Face hub weights.*https://.*model\.weights="):
        create_vit("vit_huge_patch14_gap_224.in1k_ijepa", pretrained=True, img_size=224)


class Payload:
    """Unpickling this creates `marker`: a stand-in for any code a malicious checkpoint would run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_pickled_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "vit.pth"
    torch.save({"model": tiny_vit().state_dict(), "extra": Payload(marker)}, path)

    with pytest.raises(UnsafeWeightsError, match=rf"{path}: refused.*mkdir.*weights_only=True"):
        create_vit(NAME, pretrained=True, weights=path, img_size=32, **TINY)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # proves the payload is live: an unsafe load runs it
    assert marker.exists()


def test_missing_path_is_named(tmp_path):
    missing = tmp_path / "nowhere" / "vit.safetensors"
    with pytest.raises(WeightsNotFoundError, match=rf"{missing}: no such file.*model\.weights="):
        create_vit(NAME, pretrained=True, weights=missing, img_size=32, **TINY)


def test_folder_without_one_clear_weight_file_is_named(tmp_path):
    with pytest.raises(
        WeightsNotFoundError, match=rf"weights folder {tmp_path}: holds no model\.safetensors"
    ):
        create_vit(NAME, pretrained=True, weights=tmp_path, img_size=32, **TINY)
    for name in ("a.pth", "b.safetensors"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(InvalidWeightsError, match=r"several weight files \(a\.pth, b\.safetensors\)"):
        create_vit(NAME, pretrained=True, weights=tmp_path, img_size=32, **TINY)


def test_unsupported_file_type_is_named(tmp_path):
    path = tmp_path / "vit.onnx"
    path.write_bytes(b"")
    with pytest.raises(InvalidWeightsError, match=r"vit\.onnx: unsupported type '\.onnx'"):
        create_vit(NAME, pretrained=True, weights=path, img_size=32, **TINY)


def test_weights_of_another_layout_fail_instead_of_loading_partly(tmp_path):
    state_dict = {f"backbone.{key}": value for key, value in tiny_vit().state_dict().items()}
    safetensors.torch.save_file(state_dict, tmp_path / "method.safetensors")
    with pytest.raises(
        InvalidWeightsError, match=r"(?s)method\.safetensors does not fit vit_tiny_patch16_224.*30 missing.*"
                                   r"keys start with 'backbone\.'"
    ):
        create_vit(NAME, pretrained=True, weights=tmp_path / "method.safetensors", img_size=32, **TINY)

    wider = tiny_vit(embed_dim=64)
    safetensors.torch.save_file(wider.state_dict(), tmp_path / "wider.safetensors")
    with pytest.raises(InvalidWeightsError, match=r"(?s)wider\.safetensors does not fit.*other shape: cls_token"):
        create_vit(NAME, pretrained=True, weights=tmp_path / "wider.safetensors", img_size=32, **TINY)


def test_corrupt_file_is_named(tmp_path):
    path = tmp_path / "vit.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(InvalidWeightsError, match=r"vit\.safetensors: cannot be read"):
        create_vit(NAME, pretrained=True, weights=path, img_size=32, **TINY)


def test_random_init_reads_no_weights(tmp_path):
    vit = create_vit(NAME, pretrained=False, weights=tmp_path / "never-read.pth", img_size=48, **TINY)
    assert vit.patch_embed.grid_size == (6, 6)
    assert isinstance(vit.head, torch.nn.Identity)


def test_unknown_names_suggest_close_ones():
    with pytest.raises(
        ModelNameError, match=r"unknown timm model 'vit_tinny_patch16_224'.*vit_tiny_patch16_224"
    ):
        create_vit("vit_tinny_patch16_224", pretrained=False, img_size=32)
    with pytest.raises(
        ModelNameError, match=r"no tag 'in99k' for vit_tiny_patch16_224 \(known: .*augreg_in21k"
    ):
        create_vit("vit_tiny_patch16_224.in99k", pretrained=False, img_size=32)


def test_non_vit_model_is_refused_before_any_download(hub_cache, offline):
    with pytest.raises(ModelNameError, match=r"resnet18 is a ResNet, not a ViT-family model"):
        create_vit("resnet18", pretrained=True, img_size=32)


def test_hub_module_answers_offline_mode_from_its_constants(offline):
    # The fixtures above rely on this: if huggingface_hub stops reading its constants at call time,
    # they would silently test nothing.
    assert huggingface_hub.is_offline_mode()


def test_user_caused_errors_are_fgir_errors():
    # The CLI prints FgirError as one readable line instead of a traceback.
    for error in (ModelNameError, WeightsNotFoundError, UnsafeWeightsError, InvalidWeightsError):
        assert issubclass(error, FgirError)
