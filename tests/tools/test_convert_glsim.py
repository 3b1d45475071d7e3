"""Converter from the GLSim paper's release files: a tiny checkpoint with the reference's exact key
names (arkel23/GLSim glsim/model_utils/glsim.py + transformer.py, saved through the `.model` wrapper of
build_model.py) converts, restores, and computes what the reference forward computes."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from reference_vit import (
    EPS,
    block,
    block_state,
    embed,
    embedding_state,
    layer_norm,
    linear,
    linear_state,
    norm_state,
    randn,
    write_release,
)
from torchvision import transforms

from fgir.engine.checkpoint import CheckpointError, load_checkpoint, restore_model
from fgir.tools.convert_glsim import ConversionError, convert_glsim_reference
from fgir.tools.predictor import Predictor

DIM, DEPTH, HEADS, PATCH, IMAGE, FF, CLASSES, TOP = 64, 2, 2, 8, 32, 128, 5, 4


def reference_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """ViTGLSim's state_dict (without the `model.` prefix) for a tiny ViT, random values."""
    gen = torch.Generator().manual_seed(seed)
    state = {
        **embedding_state(DIM, PATCH, IMAGE, gen),
        **norm_state("aggregator_norm", DIM, gen),
        **linear_state("head", DIM, CLASSES, gen),
        "anchor_class_token": randn(gen, 1, 1, DIM),  # exists, unused by the forward
    }
    for i in range(DEPTH):
        state.update(block_state(f"encoder.blocks.{i}", DIM, FF, gen))
    state.update(block_state("aggregator.blocks.0", DIM, 4 * DIM, gen))
    return state


def release_args(**changes: object) -> argparse.Namespace:
    args = argparse.Namespace(
        model_name="vit_b16", dataset_name="dafb", image_size=IMAGE, num_classes=CLASSES,
        custom_mean_std=True, test_resize_size=40, test_resize_directly=False, test_flip=False,
        classifier="cls", sim_metric="cos", dynamic_anchor=True, dynamic_top=TOP, anchor_random=False,
        anchor_class_token=True, reducer="cls", aggregator=True, aggregator_num_hidden_layers=1,
        aggregator_norm=True, encoder_norm=True, pos_embedding_type="learned", hidden_size=DIM,
        representation_size=DIM, num_attention_heads=HEADS, intermediate_size=FF, num_hidden_layers=DEPTH,
        layer_norm_eps=EPS, device="cpu",
    )
    vars(args).update(changes)
    return args


def write_glsim_release(path: Path, state: dict[str, torch.Tensor], args: argparse.Namespace | None = None) -> Path:
    return write_release(path, state, args or release_args())


# --- the reference forward, written from its parameter names -------------------------------------


def reference_encode(state: dict, images: torch.Tensor) -> torch.Tensor:
    x = embed(state, images, PATCH)
    for i in range(DEPTH):
        x = block(state, f"encoder.blocks.{i}", x, HEADS)
    return layer_norm(state, "encoder_norm", x)


def reference_forward(state: dict, images: torch.Tensor) -> torch.Tensor:
    x = reference_encode(state, images)
    sims = F.cosine_similarity(x[:, :1], x[:, 1:], dim=-1)
    ind = sims.topk(TOP, dim=-1).indices
    side = int(math.sqrt(x.shape[1] - 1))
    rows, cols = ind // side, ind % side
    crops = []
    for i in range(images.shape[0]):  # the reference's per-sample box: the last row/col is cut off
        r0, c0 = int(rows[i].min()) * PATCH, int(cols[i].min()) * PATCH
        r1 = min(max(int(rows[i].max()) * PATCH, r0 + PATCH), IMAGE)
        c1 = min(max(int(cols[i].max()) * PATCH, c0 + PATCH), IMAGE)
        crop = images[i : i + 1, :, r0:r1, c0:c1]
        # The reference resizes with F.upsample_bilinear, i.e. align_corners=True.
        crops.append(F.interpolate(crop, size=(IMAGE, IMAGE), mode="bilinear", align_corners=True))
    x_crops = reference_encode(state, torch.cat(crops))  # same class token: shared
    fused = torch.stack([x[:, 0], x_crops[:, 0]], dim=1)  # reducer 'cls'
    fused = layer_norm(state, "aggregator_norm", block(state, "aggregator.blocks.0", fused, DIM // 64))
    return linear(state, "head", fused[:, 0])


# --- tests ----------------------------------------------------------------------------------------


@pytest.fixture
def converted(tmp_path: Path) -> tuple[dict[str, torch.Tensor], Path]:
    state = reference_state()
    out = convert_glsim_reference(write_glsim_release(tmp_path / "dafb_vit.pth", state), tmp_path / "out.safetensors")
    return state, out


def test_every_tensor_lands_in_place(converted: tuple[dict, Path]) -> None:
    state, out = converted
    model, _ = restore_model(out)
    own = model.state_dict()
    for i in range(DEPTH):
        ref, ours = f"encoder.blocks.{i}", f"backbone.vit.blocks.{i}"
        for kind in ("weight", "bias"):
            qkv = torch.cat([state[f"{ref}.attn.proj_{n}.{kind}"] for n in "qkv"])
            assert torch.equal(own[f"{ours}.attn.qkv.{kind}"], qkv)
            assert torch.equal(own[f"{ours}.attn.proj.{kind}"], state[f"{ref}.proj.{kind}"])
            assert torch.equal(own[f"{ours}.mlp.fc1.{kind}"], state[f"{ref}.pwff.fc1.{kind}"])
            assert torch.equal(own[f"{ours}.mlp.fc2.{kind}"], state[f"{ref}.pwff.fc2.{kind}"])
            assert torch.equal(own[f"{ours}.norm2.{kind}"], state[f"{ref}.norm2.{kind}"])
    agg_qkv = torch.cat([state[f"aggregator.blocks.0.attn.proj_{n}.weight"] for n in "qkv"])
    assert torch.equal(own["aggregator.block.attn.qkv.weight"], agg_qkv)
    assert torch.equal(own["aggregator.block.norm1.bias"], state["aggregator.blocks.0.norm1.bias"])
    assert torch.equal(own["aggregator.norm.weight"], state["aggregator_norm.weight"])
    assert torch.equal(own["backbone.vit.norm.bias"], state["encoder_norm.bias"])
    assert torch.equal(own["backbone.vit.patch_embed.proj.weight"], state["patch_embedding.weight"])
    assert torch.equal(own["backbone.vit.cls_token"], state["class_token"])
    assert torch.equal(own["backbone.vit.pos_embed"], state["positional_embedding.pos_embedding"])
    assert torch.equal(own["head.weight"], state["head.weight"])
    assert not any("crop_cls" in k for k in own)


def test_restored_model_computes_the_reference_forward(converted: tuple[dict, Path]) -> None:
    state, out = converted
    model, _ = restore_model(out)
    images = torch.randn(3, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        features = model.backbone.forward_features(images)
        torch.testing.assert_close(features, reference_encode(state, images), atol=1e-4, rtol=1e-4)
        logits = model(images)
        expected = reference_forward(state, images)
    assert logits.abs().max() > 0.1  # a real head, not zeros
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


def test_saved_config_and_metadata(converted: tuple[dict, Path]) -> None:
    _, out = converted
    checkpoint = load_checkpoint(out)
    config = checkpoint.config
    assert config.model.method == "glsim"
    assert config.model.backbone == "vit_base_patch16_224" and config.model.pretrained is False
    assert config.model.glsim.box == "reference" and config.model.glsim.crop_cls == "shared"
    assert config.model.glsim.top_o == TOP and config.model.glsim.similarity == "cosine"
    assert config.model.backbone_args == {"embed_dim": DIM, "depth": DEPTH, "num_heads": HEADS,
                                          "patch_size": PATCH, "mlp_ratio": FF / DIM}
    assert config.data.image_size == IMAGE and config.data.resize_ratio == 40 / IMAGE
    assert config.data.mean == [0.5] * 3 and config.data.std == [0.5] * 3  # custom_mean_std on DAFB
    assert config.data.interpolation == "bicubic" and config.data.transform_backend == "pil"
    assert config.data.test_resize == "crop" and config.data.fast_decode is False
    assert checkpoint.class_names == [str(i) for i in range(CLASSES)]
    assert checkpoint.epoch == 7 and checkpoint.metrics == {"reference_accuracy": 91.5}


def test_class_names_from_csv_and_imagenet_normalisation(tmp_path: Path) -> None:
    names = tmp_path / "names.csv"
    names.write_text("class_id,class_name\n" + "".join(f"{i},bird {i}\n" for i in range(CLASSES)))
    src = write_glsim_release(tmp_path / "cub.pth", reference_state(), release_args(custom_mean_std=False))
    out = convert_glsim_reference(src, num_classes=CLASSES, class_names=names)
    assert out == tmp_path / "cub.safetensors"
    checkpoint = load_checkpoint(out)
    assert checkpoint.class_names == [f"bird {i}" for i in range(CLASSES)]
    assert checkpoint.config.data.mean == [0.485, 0.456, 0.406]


def photo(width: int = 61, height: int = 47) -> Image.Image:
    """Gradients plus noise: a resampling or normalisation slip changes pixels."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) % 256], axis=-1)
    return Image.fromarray(np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8))


@pytest.mark.parametrize("directly", [False, True], ids=["resize-crop", "resize-directly"])
def test_predictor_sees_the_reference_test_pixels(tmp_path: Path, directly: bool) -> None:
    """The reference's test transform with CUB's custom normalisation (std ~0.05, which magnifies
    any float slip) and its default resize int(1.34 * image_size)."""
    args = release_args(dataset_name="cub", test_resize_size=None, test_resize_directly=directly)
    out = convert_glsim_reference(write_glsim_release(tmp_path / "cub.pth", reference_state(), args))
    mean, std = (0.3659524, 0.42010019, 0.41562049), (0.07625843, 0.04599726, 0.06182727)
    side = IMAGE if directly else int(IMAGE * 1.34)
    bicubic = transforms.InterpolationMode.BICUBIC
    reference = transforms.Compose([transforms.Resize((side, side), interpolation=bicubic),
                                    transforms.CenterCrop(IMAGE), transforms.ToTensor(),
                                    transforms.Normalize(mean, std)])
    ours = Predictor.from_checkpoint(out, device="cpu").transform(photo())
    assert ours.shape == (3, IMAGE, IMAGE)
    assert torch.equal(ours, reference(photo()))


def test_wrong_num_classes_is_refused(tmp_path: Path) -> None:
    src = write_glsim_release(tmp_path / "a.pth", reference_state())
    with pytest.raises(ConversionError, match="head has 5 classes"):
        convert_glsim_reference(src, tmp_path / "a.safetensors", num_classes=200)
    assert not (tmp_path / "a.safetensors").exists()


def test_unsupported_architecture_is_refused(tmp_path: Path) -> None:
    src = write_glsim_release(tmp_path / "a.pth", reference_state(), release_args(aggregator_num_hidden_layers=2))
    with pytest.raises(ConversionError, match="aggregator_num_hidden_layers=2"):
        convert_glsim_reference(src, tmp_path / "a.safetensors")


def test_missing_and_unknown_keys_are_listed(tmp_path: Path) -> None:
    state = reference_state()
    del state["encoder.blocks.1.pwff.fc2.bias"]
    state["encoder.blocks.0.attn.extra.weight"] = torch.zeros(1)
    src = write_glsim_release(tmp_path / "a.pth", state)
    with pytest.raises(CheckpointError) as err:
        convert_glsim_reference(src, tmp_path / "a.safetensors")
    assert "backbone.vit.blocks.1.mlp.fc2.bias" in str(err.value)
    assert "encoder.blocks.0.attn.extra.weight" in str(err.value)
    assert not (tmp_path / "a.safetensors").exists()


class _Payload:
    """Unpickling this calls open(marker, 'w'): arbitrary code in a checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def test_code_in_the_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    src = tmp_path / "evil.pth"
    torch.save({"config": release_args(), "model": reference_state(), "extra": _Payload(marker)}, src)
    with pytest.raises(ConversionError, match="refused to load"):
        convert_glsim_reference(src, tmp_path / "evil.safetensors")
    assert not marker.exists()
    assert not (tmp_path / "evil.safetensors").exists()
    torch.load(src, weights_only=False)  # the payload is live: a full unpickle runs it
    assert marker.exists()


def test_bad_class_names_file_is_a_conversion_error(tmp_path: Path) -> None:
    names = tmp_path / "names.csv"
    names.write_text("0,a\n2,c\n")
    src = write_glsim_release(tmp_path / "a.pth", reference_state())
    with pytest.raises(ConversionError, match="class ids must be 0..1"):
        convert_glsim_reference(src, tmp_path / "a.safetensors", class_names=names)
