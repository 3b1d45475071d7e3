"""GLSim: selection math against the spec's worked example and a per-sample loop, the model's wiring
(shared encoder, crop CLS, aggregator, head), gradients, batch independence and the paper's counts."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_backbone
from fgir.models.backbone import Backbone
from fgir.models.gls import boxes_from_indices, crop_and_resize, gls_scores, selection_flops
from fgir.models.glsim import GLSim, GLSimConfig


def tiny_glsim(num_classes: int = 5, backbone: Backbone | None = None, **config) -> GLSim:
    backbone = backbone or tiny_backbone()
    torch.manual_seed(1)
    return GLSim(backbone, num_classes, GLSimConfig(**{"top_o": 3, **config}), zero_init_head=False)


def images_like(model: GLSim, batch: int = 3, seed: int = 2) -> torch.Tensor:
    height, width = model.backbone.vit.patch_embed.img_size
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


# --- selection math ---------------------------------------------------------------------------


def grid_indices(rows: range, cols: range, grid_w: int) -> torch.Tensor:
    return torch.tensor([[r * grid_w + c for r in rows for c in cols]])


def test_box_reference_matches_spec_example():
    # Spec: selected rows 3..9, cols 4..10, P=16 -> pixel rows 48..143, cols 64..159.
    indices = grid_indices(range(3, 10), range(4, 11), 14)
    box = boxes_from_indices(indices, (14, 14), (16, 16), (224, 224), "reference")
    assert box.tolist() == [[64, 48, 160, 144]]


def test_box_inclusive_covers_last_patch():
    indices = grid_indices(range(3, 10), range(4, 11), 14)
    box = boxes_from_indices(indices, (14, 14), (16, 16), (224, 224), "inclusive")
    assert box.tolist() == [[64, 48, 176, 160]]


@pytest.mark.parametrize("mode", ["reference", "inclusive"])
def test_box_single_row_and_column_is_one_patch(mode):
    # min == max: both modes give one patch; the reference's max() keeps it from collapsing to 0 px.
    indices = torch.tensor([[5 * 14 + 13, 5 * 14 + 13]])
    box = boxes_from_indices(indices, (14, 14), (16, 16), (224, 224), mode)
    assert box.tolist() == [[208, 80, 224, 96]]


def test_box_non_square_grid_uses_width_for_columns():
    # Grid 2 rows x 5 cols, patch (8, 4): index 7 is row 1, col 2; index 1 is row 0, col 1.
    box = boxes_from_indices(torch.tensor([[7, 1]]), (2, 5), (8, 4), (16, 20), "inclusive")
    assert box.tolist() == [[4, 0, 12, 16]]


def test_box_clipped_to_image():
    # 20 px wide with 8 px patches: the grid has 2 columns, the last patch ends at 16 < 20, and an
    # image narrower than the grid's end (15 px) clips.
    box = boxes_from_indices(torch.tensor([[1]]), (2, 2), (8, 8), (15, 15), "inclusive")
    assert box.tolist() == [[8, 0, 15, 8]]


def test_similarities_pick_expected_patches():
    global_token = torch.tensor([[1.0, 0.0]])
    patches = torch.tensor([[[3.0, 0.0], [1.6, 0.6], [1.0, 1.0]]])
    # cosine: [3, 0] is parallel; L2: [1.6, 0.6] is 0.85 away (vs 1, 2); L1: [1, 1] is 1 away (vs 1.2, 2).
    winners = {
        kind: gls_scores(global_token, patches, kind).argmax(1).item() for kind in ("cosine", "l2", "l1")
    }
    assert winners == {"cosine": 0, "l2": 1, "l1": 2}
    assert torch.allclose(gls_scores(global_token, patches, "l1"), torch.tensor([[-2.0, -1.2, -1.0]]))


def test_unknown_similarity_is_an_error():
    with pytest.raises(ValueError, match="unknown GLS similarity 'dot'"):
        gls_scores(torch.zeros(1, 2), torch.zeros(1, 3, 2), "dot")


def per_sample_crops(images: torch.Tensor, boxes: torch.Tensor, align_corners: bool = False) -> torch.Tensor:
    size = images.shape[-2:]
    return torch.cat(
        [
            F.interpolate(image[None, :, y0:y1, x0:x1], size=size, mode="bilinear", align_corners=align_corners)
            for image, (x0, y0, x1, y1) in zip(images, boxes.tolist(), strict=True)
        ]
    )


@pytest.mark.parametrize("align_corners", [False, True])
def test_batched_crop_equals_per_sample_interpolate(align_corners):
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 32, 48, generator=generator)
    # Whole image, interior, one-patch corner, odd sizes.
    boxes = torch.tensor([[0, 0, 48, 32], [8, 4, 20, 12], [40, 24, 48, 32], [5, 0, 37, 31]])
    torch.testing.assert_close(
        crop_and_resize(images, boxes, align_corners),
        per_sample_crops(images, boxes, align_corners),
        atol=1e-5,
        rtol=0,
    )


def test_batched_crop_equals_per_sample_interpolate_random_boxes():
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(64, 2, 40, 56, generator=generator)
    x = torch.sort(torch.randint(0, 57, (64, 2), generator=generator), dim=1).values
    y = torch.sort(torch.randint(0, 41, (64, 2), generator=generator), dim=1).values
    x[:, 1] = torch.maximum(x[:, 1], x[:, 0] + 1).clamp(max=56)
    x[:, 0] = x[:, 0].clamp(max=55)
    y[:, 1] = torch.maximum(y[:, 1], y[:, 0] + 1).clamp(max=40)
    y[:, 0] = y[:, 0].clamp(max=39)
    boxes = torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)
    torch.testing.assert_close(
        crop_and_resize(images, boxes), per_sample_crops(images, boxes), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("box", ["inclusive", "reference"])
def test_model_boxes_follow_box_mode(box):
    model = tiny_glsim(box=box, top_o=4).eval()
    details = model.forward_details(images_like(model))
    expected = boxes_from_indices(details.indices, (4, 4), (8, 8), (32, 32), box)
    assert torch.equal(details.boxes, expected)


# --- the model ----------------------------------------------------------------------------------


def test_forward_details_shapes_and_consistency():
    model = tiny_glsim().eval()
    images = images_like(model)
    details = model.forward_details(images)
    assert details.logits.shape == (3, 5)
    assert details.scores.shape == (3, 16) and details.indices.shape == (3, 3)
    assert details.crops.shape == images.shape
    assert torch.equal(details.indices, details.scores.topk(3, dim=1).indices)
    expected_boxes = boxes_from_indices(details.indices, (4, 4), (8, 8), (32, 32), "inclusive")
    assert torch.equal(details.boxes, expected_boxes)
    torch.testing.assert_close(details.crops, crop_and_resize(images, expected_boxes))
    torch.testing.assert_close(model(images), details.logits)


def test_scores_are_cosine_of_final_cls_and_patches_without_registers():
    model = tiny_glsim(backbone=tiny_backbone(reg_tokens=4)).eval()
    images = images_like(model)
    tokens = model.backbone.forward_features(images)
    assert tokens.shape[1] == 1 + 4 + 16
    expected = F.cosine_similarity(tokens[:, :1], tokens[:, 5:], dim=-1)
    torch.testing.assert_close(model.forward_details(images).scores, expected)


def test_crop_pass_uses_shared_encoder_with_separate_cls():
    model = tiny_glsim().eval()
    assert torch.equal(model.crop_cls, model.backbone.vit.cls_token)
    images = images_like(model)
    # Initialised as a copy, the crop CLS reproduces the backbone's own embedding ...
    torch.testing.assert_close(model.embed_with_crop_cls(images), model.backbone.embed(images))
    # ... and a different crop CLS changes only the CLS slot.
    with torch.no_grad():
        model.crop_cls.add_(1.0)
    difference = model.embed_with_crop_cls(images) - model.backbone.embed(images)
    torch.testing.assert_close(difference[:, 0], torch.ones_like(difference[:, 0]))
    assert difference[:, 1:].abs().max() == 0


@pytest.mark.parametrize("crop_cls", ["separate", "shared"])
def test_logits_follow_the_described_computation(crop_cls):
    model = tiny_glsim(crop_cls=crop_cls).eval()
    images = images_like(model)
    details = model.forward_details(images)
    backbone = model.backbone
    if crop_cls == "separate":
        crop_tokens = backbone.norm(backbone.run_blocks(model.embed_with_crop_cls(details.crops)))
    else:
        crop_tokens = backbone.forward_features(details.crops)
    fused = torch.stack([backbone.forward_features(images)[:, 0], crop_tokens[:, 0]], dim=1)
    expected = model.head(model.aggregator.norm(model.aggregator.block(fused))[:, 0])
    torch.testing.assert_close(details.logits, expected)


@pytest.mark.parametrize("head", ["avg", "max"])
def test_head_variants_reduce_logits_of_both_tokens(head):
    model = tiny_glsim(head=head).eval()
    images = images_like(model)
    model.config = replace(model.config, head="token")
    token_logits = model(images)
    fused_logits = model.head(_fused_tokens(model, images))
    model.config = replace(model.config, head=head)
    reduced = fused_logits.mean(1) if head == "avg" else fused_logits.amax(1)
    torch.testing.assert_close(model(images), reduced)
    torch.testing.assert_close(token_logits, fused_logits[:, 0])


def _fused_tokens(model: GLSim, images: torch.Tensor) -> torch.Tensor:
    captured = {}
    handle = model.aggregator.register_forward_hook(lambda module, args, output: captured.update(out=output))
    model(images)
    handle.remove()
    return captured["out"]


def test_non_square_input_end_to_end():
    model = tiny_glsim(backbone=tiny_backbone(img_size=(32, 48))).eval()
    images = images_like(model, batch=2)
    details = model.forward_details(images)
    assert details.scores.shape == (2, 4 * 6) and details.crops.shape == (2, 3, 32, 48)
    rows, cols = details.indices // 6, details.indices % 6
    assert torch.equal(details.boxes[:, 0], cols.amin(1) * 8)
    assert torch.equal(details.boxes[:, 3], (rows.amax(1) + 1) * 8)
    assert details.logits.isfinite().all()


def test_dynamic_size_input_uses_its_own_grid():
    model = tiny_glsim(backbone=tiny_backbone(dynamic_img_size=True)).eval()
    images = torch.randn(2, 3, 24, 40)
    details = model.forward_details(images)
    assert details.scores.shape == (2, 3 * 5) and details.crops.shape == images.shape


def test_no_cls_backbone_uses_mean_token_and_rejects_separate_crop_cls():
    backbone = tiny_backbone(class_token=False, global_pool="avg")
    with pytest.raises(ValueError, match="crop_cls='separate' needs a CLS token"):
        tiny_glsim(backbone=backbone)
    model = tiny_glsim(backbone=backbone, crop_cls="shared").eval()
    images = images_like(model)
    tokens = backbone.forward_features(images)
    expected = F.cosine_similarity(tokens.mean(1, keepdim=True), tokens, dim=-1)
    torch.testing.assert_close(model.forward_details(images).scores, expected)


@pytest.mark.parametrize("selection", ["crop", "tokens"])
def test_gradient_census(selection):
    model = tiny_glsim(selection=selection).train()
    details = model.forward_details(images_like(model))
    details.logits.logsumexp(1).sum().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    names = {name for name, _ in model.named_parameters()}
    assert ("crop_cls" in names) == (selection == "crop")
    assert any(name.startswith("aggregator.") for name in names) and "head.weight" in names
    assert not details.scores.requires_grad and not details.boxes.requires_grad


def test_crop_pass_carries_gradient_into_the_shared_encoder():
    model = tiny_glsim(crop_cls="shared").train()
    embedded = []

    def keep_grad(module, args, output):
        output.retain_grad()
        embedded.append(output)

    handle = model.backbone.vit.patch_embed.register_forward_hook(keep_grad)
    model(images_like(model)).sum().backward()
    handle.remove()
    image_pass, crop_pass = embedded
    assert image_pass.grad.abs().sum() > 0 and crop_pass.grad.abs().sum() > 0


def test_batch_independence():
    model = tiny_glsim(test_flip=True).eval()
    images = images_like(model, batch=4)
    changed = images.clone()
    changed[1:] = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(changed)[0], model(images)[0], atol=1e-5, rtol=0)


def count_encoder_passes(model: GLSim, images: torch.Tensor) -> int:
    calls = []
    handle = model.backbone.vit.patch_embed.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        model(images)
    handle.remove()
    return len(calls)


def test_tokens_selection_has_one_pass_and_gathers_top_tokens():
    model = tiny_glsim(selection="tokens").eval()
    images = images_like(model)
    assert count_encoder_passes(model, images) == 1
    assert count_encoder_passes(tiny_glsim().eval(), images) == 2
    fused = _fused_tokens(model, images)
    assert fused.shape == (3, 1 + 3, 32)
    details = model.forward_details(images)
    assert details.crops is None and details.logits.shape == (3, 5)
    tokens = model.backbone.forward_features(images)
    selected = torch.stack([tokens[i, 1 + details.indices[i]] for i in range(3)])
    expected = model.aggregator(torch.cat([tokens[:, :1], selected], dim=1))
    torch.testing.assert_close(fused, expected)


def test_test_flip_averages_in_eval_only():
    model = tiny_glsim(test_flip=True).eval()
    images = images_like(model)
    plain = tiny_glsim(test_flip=False).eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        expected = (plain(images) + plain(images.flip(-1))) / 2
        torch.testing.assert_close(model(images), expected, atol=1e-5, rtol=0)
        assert not torch.allclose(plain(images), expected, atol=1e-4)
        model.train()
        torch.testing.assert_close(model(images), plain.train()(images))


def test_top_o_larger_than_grid_is_an_error():
    model = tiny_glsim(top_o=17).eval()
    with pytest.raises(ValueError, match="top_o=17 exceeds the 16 patches"):
        model(images_like(model))


def test_vit_b16_parameter_counts_match_paper():
    with torch.device("meta"):
        backbone = Backbone.create("vit_base_patch16_224", pretrained=False, img_size=224)
        model = GLSim(backbone, 200, GLSimConfig())
    total = sum(p.numel() for p in model.parameters())
    aggregator = sum(p.numel() for p in model.aggregator.parameters())
    assert abs(total / 1e6 - 93.04) < 0.005
    assert abs(aggregator / 1e6 - 7.09) < 0.005
    assert model.aggregator.block.attn.num_heads == 12


def test_selection_flops_by_hand():
    # 4 patches of width 2: cosine = per patch a dot product and a squared norm (2 + 1 each), a root,
    # a multiply and a divide (9), plus the global squared norm and its root (4): 40; a 2x2 RGB
    # crop resize: 8 * 3 * 4 = 96.
    assert selection_flops(4, 2, "cosine", (2, 2)) == 40 + 96
    assert selection_flops(4, 2, "l2", (2, 2)) == 3 * 4 * 2 + 96
    with pytest.raises(ValueError, match="unknown GLS similarity 'dot'"):
        selection_flops(4, 2, "dot", (2, 2))
