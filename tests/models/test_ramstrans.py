import pytest
import torch
import torch.nn.functional as F
from method_checks import (
    added_parameters,
    refused_before_work,
    trainable_and_reached,
    trains_one_epoch,
    vit_b16,
)
from torch.utils.flop_counter import FlopCounterMode

from conftest import tiny_backbone
from fgir.config import model_config
from fgir.methods.capabilities import Explains, HasFrozenBackbone, SelectsRegions
from fgir.models.layers.attention_capture import attention_matrices
from fgir.models.layers.attention_rollout import attention_rollout
from fgir.models.ramstrans import RAMSTrans, RAMSTransConfig, build_ramstrans, rollout_selection_flops
from fgir.tools.bench import selection_cost
from fgir.tools.explain import explanation_panels

CLASSES = 5
PATCH = 8
VIT_B_BLOCK = 2 * 768 + (768 * 2304 + 2304) + (768 * 768 + 768) + 2 * 768 + (768 * 3072 + 3072) + (3072 * 768 + 768)


def make(depth=3, **config) -> RAMSTrans:
    return RAMSTrans(tiny_backbone(depth=depth), CLASSES, RAMSTransConfig(**{"top_k": 4, **config}), zero_init_head=False)


def selection_by_loops(model: RAMSTrans, images: torch.Tensor, box: str):
    """The selection re-derived another way: the attention recorded from timm's own attention path,
    rolled out per sample in float64 with explicit sums, the top patches by sorting, the box by
    Python min/max over (row, column) pairs, and each crop sliced and resized by F.interpolate."""
    maps = [m.double() for m in attention_matrices(model.backbone, images)]
    tokens = maps[0].shape[-1]
    side = images.shape[-1] // PATCH
    picked, boxes, crops = [], [], []
    for b in range(images.shape[0]):
        rolled = torch.eye(tokens, dtype=torch.float64)
        for layer in maps:
            mixed = sum(layer[b, h] for h in range(layer.shape[1])) / layer.shape[1] + torch.eye(tokens)
            mixed = mixed / mixed.sum(dim=1, keepdim=True)
            rolled = mixed @ rolled
        row = rolled[0, 1:].tolist()
        top = sorted(range(len(row)), key=lambda i: -row[i])[: model.config.top_k]
        cells = [divmod(i, side) for i in top]
        r0, r1 = min(r for r, _ in cells), max(r for r, _ in cells)
        c0, c1 = min(c for _, c in cells), max(c for _, c in cells)
        if box == "inclusive":
            y1, x1 = (r1 + 1) * PATCH, (c1 + 1) * PATCH
        else:  # the reference: up to the start of the last selected row and column, one patch at least
            y1, x1 = max(r1 * PATCH, r0 * PATCH + PATCH), max(c1 * PATCH, c0 * PATCH + PATCH)
        y0, x0 = r0 * PATCH, c0 * PATCH
        picked.append(sorted(top))
        boxes.append([x0, y0, x1, y1])
        crops.append(F.interpolate(images[b:b + 1, :, y0:y1, x0:x1], size=images.shape[-2:], mode="bilinear",
                                   align_corners=box == "reference"))
    return picked, torch.tensor(boxes), torch.cat(crops)


@pytest.mark.parametrize("box", ["inclusive", "reference"])
def test_selection_equals_the_rollout_written_out(box):
    model = make(box=box).eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        details = model.forward_details(images)
    picked, boxes, crops = selection_by_loops(model, images, box)
    assert details.indices.sort(dim=1).values.tolist() == picked
    assert torch.equal(details.boxes, boxes)
    torch.testing.assert_close(details.crops, crops, rtol=0, atol=1e-5)
    rollout = attention_rollout(attention_matrices(model.backbone, images))
    torch.testing.assert_close(details.scores, rollout[:, 0, 1:], rtol=0, atol=1e-6)


def test_logits_are_the_mean_of_the_head_on_both_cls_tokens():
    model = make().eval()
    with torch.no_grad():
        model.crop_cls.add_(0.5)  # the crop's own CLS token differs from the image's
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        details = model.forward_details(images)
        image_cls = model.backbone.forward_features(images)[:, 0]
        original = model.backbone.vit.cls_token.clone()
        model.backbone.vit.cls_token.copy_(model.crop_cls)
        crop_cls = model.backbone.forward_features(details.crops)[:, 0]
        model.backbone.vit.cls_token.copy_(original)
    expected = (model.head(image_cls) + model.head(crop_cls)) / 2
    torch.testing.assert_close(details.logits, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(model(images), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("frozen", [True, False])
def test_gradient_census_frozen_and_full(frozen):
    model = make(frozen=frozen)
    trainable = trainable_and_reached(model)
    if frozen:
        assert trainable == {"backbone.vit.cls_token", "crop_cls", "head.weight", "head.bias"}
        assert not model.backbone.blocks[0].training and isinstance(model, HasFrozenBackbone)
        assert "backbone.vit.blocks.0.attn.qkv.weight" in model.frozen_state_keys()
    else:
        assert trainable == {name for name, _ in model.named_parameters()} and model.frozen_state_keys() == set()


def test_frozen_without_cls_training_freezes_both_cls_tokens():
    model = make(frozen=True, train_cls_token=False)
    assert {name for name, p in model.named_parameters() if p.requires_grad} == {"head.weight", "head.bias"}


def test_gradient_checkpointing_gives_the_same_gradients():
    images = torch.randn(2, 3, 32, 32)
    grads = []
    for checkpointing in (False, True):
        model = make(frozen=False).train()
        model.backbone.set_grad_checkpointing(checkpointing)
        model(images).logsumexp(dim=1).sum().backward()
        grads.append({name: p.grad for name, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_vit_b16_at_448_has_the_parameters_of_the_reference_build():
    """The reference (ViTGLSim with the ramstrans config) holds ViT-B/16 (patch convolution, CLS
    token, 785 position embeddings, 12 blocks, final norm), the anchor (crop) CLS token and one
    Linear(768, classes) head shared by both CLS tokens; its reducer is an identity and there is no
    aggregator. Frozen, it trains the head and both CLS tokens."""
    vit = (3 * 16 * 16 * 768 + 768) + 768 + 785 * 768 + 12 * VIT_B_BLOCK + 2 * 768
    head = 768 * 200 + 200
    with torch.device("meta"):
        model = build_ramstrans(vit_b16(448), 200, model_config("ramstrans"))
    assert sum(p.numel() for p in model.parameters()) == vit + 768 + head == 86_404_808
    assert added_parameters(model) == {"crop_cls": 768, "head": head}
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == head + 2 * 768


def test_selection_flops_are_the_counted_products_plus_the_elementwise_work():
    model = make(depth=3).eval()
    images = torch.randn(1, 3, 32, 32)
    maps = attention_matrices(model.backbone, images)
    counter = FlopCounterMode(display=False)
    with counter:
        attention_rollout(maps)
    tokens, blocks, heads = 17, 3, 2
    elementwise = blocks * (heads * tokens**2 + tokens**2 + tokens * (tokens - 1) + tokens**2)
    resize = 8 * 3 * 32 * 32
    assert counter.get_total_flops() == (blocks - 1) * 2 * tokens**3
    assert model.selection_flops((32, 32)) == counter.get_total_flops() + elementwise + resize


def test_selection_flops_of_vit_b16_agree_with_the_ila_reference_count():
    """The ILA reference's own count (its tools/calc_flops.py) of the rollout, S = 785 at 448 and
    197 at 224: per block H S^2 + S^2 + S (S + 1) + 1, and (L - 1) S^2 (2S - 1) for the products;
    ours counts the products as 2 S^3 and adds the crop's resize."""
    for size, tokens in ((224, 197), (448, 785)):
        reference = 12 * (12 * tokens**2 + tokens**2 + tokens * (tokens + 1) + 1) + 11 * tokens**2 * (2 * tokens - 1)
        ours = rollout_selection_flops(tokens, 12, 12, (size, size))
        assert ours == pytest.approx(reference, rel=0.02)
    assert rollout_selection_flops(785, 12, 12, (448, 448)) / 1e6 == pytest.approx(1.07e4, rel=0.01)


def test_bench_times_the_rollout_selection():
    model = make().eval()
    assert isinstance(model, SelectsRegions) and isinstance(model, Explains)
    cost = selection_cost(model, torch.randn(2, 3, 32, 32), torch.device("cpu"), warmup=0, iters=1)
    assert cost["selection_gflops_per_image"] * 1e9 == model.selection_flops((32, 32))


def test_explanation_names_its_map():
    model = make().eval()
    images = torch.randn(1, 3, 32, 32)
    panels = explanation_panels(model, model.backbone, images, images[0].permute(1, 2, 0).numpy())
    assert [title.split(" (")[0] for title, *_ in panels] == [
        "input", "rolled-out CLS attention", "selected box", "crop", "last-layer attention", "attention rollout"]


def test_one_epoch_through_the_trainer(tiny_config):
    trains_one_epoch(tiny_config, "model.method=ramstrans", "model.ramstrans.top_k=4")


def test_a_top_k_above_the_patch_count_is_refused_before_any_work(tmp_path, capsys):
    line = refused_before_work(tmp_path, capsys, "model.method=ramstrans", "model.ramstrans.top_k=17")
    assert line.endswith("model.ramstrans.top_k=17 is larger than the number of patches (32/8)^2 = 16 at "
                         "data.image_size=32")
