import json
import math

import pytest
import torch

from conftest import AotEagerCompiler
from fgir.config import Config, ConfigError, DataConfig, ModelConfig, model_config
from fgir.engine.checkpoint import save_checkpoint
from fgir.methods import build_model
from fgir.models.ffvt import FFVTConfig
from fgir.models.gls import selection_flops
from fgir.models.peft.vpt import VPTConfig
from fgir.tools.bench import benchmark, benchmark_target, count_flops
from fgir.tools.selector_cost import SELECTORS

PATCH, DIM, DEPTH, HEADS, IMAGE, CLASSES = 8, 32, 2, 2, 32, 5
TINY = ModelConfig(method="vit", backbone="vit_tiny_patch16_224", pretrained=False,
                   backbone_args={"patch_size": PATCH, "embed_dim": DIM, "depth": DEPTH, "num_heads": HEADS})
QUICK = {"device": "cpu", "batch_size": 2, "warmup": 1, "iters": 2}


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(TINY, CLASSES, IMAGE, pretrained=False)


def analytic_vit_flops() -> int:
    """2 FLOPs per multiply-accumulate of every matmul of a ViT forward pass on one image."""
    patches = (IMAGE // PATCH) ** 2
    tokens = patches + 1  # + class token
    patch_embed = patches * (3 * PATCH * PATCH) * DIM
    block = (tokens * DIM * 3 * DIM  # qkv
             + 2 * tokens * tokens * DIM  # q k^T and attention @ v, all heads together
             + tokens * DIM * DIM  # attention output projection
             + 2 * tokens * DIM * 4 * DIM)  # fc1 and fc2 (MLP ratio 4)
    head = DIM * CLASSES  # on the pooled class token only
    return 2 * (patch_embed + DEPTH * block + head)


def test_flops_match_an_analytic_count_of_the_matmuls():
    flops = count_flops(tiny_model(), IMAGE, torch.device("cpu"))
    # The CPU's fused attention kernel is invisible to FlopCounterMode; without the math backend
    # the attention matmuls (about 10% here) would be missing.
    assert flops == pytest.approx(analytic_vit_flops(), rel=0.02)
    report = benchmark(tiny_model(), image_size=IMAGE, **QUICK)
    assert report["gflops_per_image"] * 1e9 == pytest.approx(flops)
    assert report["gmacs_per_image"] == pytest.approx(report["gflops_per_image"] / 2)


def test_parameter_counts_and_frozen_backbone():
    model = tiny_model()
    full = benchmark(model, image_size=IMAGE, **QUICK)
    total = sum(p.numel() for p in model.parameters())
    assert full["params_total"] == full["params_trainable"] == total

    model.backbone.requires_grad_(False)
    frozen = benchmark(model, image_size=IMAGE, **QUICK)
    assert frozen["params_total"] == total
    assert frozen["params_trainable"] == sum(p.numel() for p in model.head.parameters()) < total
    assert frozen["train_img_per_s"] > 0

    model.requires_grad_(False)
    assert benchmark(model, image_size=IMAGE, **QUICK)["train_img_per_s"] is None


def test_benchmark_leaves_the_weights_and_gradients_untouched():
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    benchmark(model, image_size=IMAGE, **QUICK)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_report_from_a_config_is_json_ready_with_positive_finite_rates():
    config = Config(data=DataConfig(num_classes=CLASSES, image_size=IMAGE), model=TINY)
    report = json.loads(json.dumps(benchmark(config, **QUICK)))
    assert (report["num_classes"], report["image_size"], report["batch_size"]) == (CLASSES, IMAGE, 2)
    assert report["model"] == "vit/vit_tiny_patch16_224"
    for key in ("infer_img_per_s", "latency_ms_batch1", "train_img_per_s", "gflops_per_image"):
        assert math.isfinite(report[key]) and report[key] > 0, key
    assert report["peak_memory_mb"] >= 0 and report["peak_memory_source"]
    assert report["device"] == "cpu" and report["device_name"] and report["torch_threads"] >= 1

    with pytest.raises(ConfigError, match="needs num_classes"):
        benchmark(TINY, image_size=IMAGE, **QUICK)


def test_checkpoint_benchmark_uses_its_class_count_and_image_size(tmp_path):
    config = Config(data=DataConfig(image_size=IMAGE), model=TINY)
    path = save_checkpoint(tmp_path / "run" / "checkpoints" / "best.safetensors", tiny_model(), config,
                           [str(i) for i in range(CLASSES)], epoch=1, global_step=1)
    report = benchmark_target(tmp_path / "run", **QUICK)  # a run directory resolves to its checkpoint
    assert (report["num_classes"], report["image_size"]) == (CLASSES, IMAGE)
    assert report["params_total"] == sum(p.numel() for p in tiny_model().parameters())
    assert report["checkpoint"] == str(path)
    with pytest.raises(ConfigError, match="overrides apply to a recipe"):
        benchmark_target(path, ["data.image_size=64"], **QUICK)


def test_recipe_benchmark_applies_overrides_without_a_dataset(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"data: {{format: synthetic, root: {tmp_path / 'never-generated'}, synthetic: {{num_classes: 7}}}}\n"
        "model: {backbone: vit_tiny_patch16_224, pretrained: false,"
        f" backbone_args: {{patch_size: {PATCH}, embed_dim: {DIM}, depth: {DEPTH}, num_heads: {HEADS}}}}}\n"
    )
    report = benchmark_target(recipe, [f"data.image_size={IMAGE}"], **QUICK)
    assert (report["num_classes"], report["image_size"], report["recipe"]) == (7, IMAGE, str(recipe))
    assert not (tmp_path / "never-generated").exists()


def test_glsim_report_breaks_out_the_selection_step():
    torch.manual_seed(0)
    glsim = build_model(model_config(**{**TINY.__dict__, "method": "glsim"}), CLASSES, IMAGE, pretrained=False)
    report = benchmark(glsim, image_size=IMAGE, **QUICK)
    selection = report["glsim_selection"]
    # One encoder pass is the plain ViT's forward without its head.
    head_flops = 2 * DIM * CLASSES
    assert selection["encoder_pass_gflops_per_image"] * 1e9 == pytest.approx(analytic_vit_flops() - head_flops, rel=0.02)
    assert selection["selection_gflops_per_image"] * 1e9 == selection_flops((IMAGE // PATCH) ** 2, DIM, "cosine",
                                                                            (IMAGE, IMAGE))
    assert 0 < selection["selection_time_share"] == pytest.approx(selection["selection_ms"] / selection["encoder_pass_ms"])
    assert "glsim_selection" not in benchmark(tiny_model(), image_size=IMAGE, **QUICK)
    assert report["selector"]["selector"] == "gls"


@pytest.mark.parametrize(("method", "selector"), [("transfg", "psm"), ("ffvt", "maws")])
def test_report_of_a_selecting_method_counts_and_times_its_selector(method, selector):
    backbone_args = {**TINY.backbone_args, "depth": 3}  # both select in blocks 0..L-2: two maps
    config = model_config(**{**TINY.__dict__, "method": method, "backbone_args": backbone_args})
    if method == "ffvt":
        config = model_config(**{**config.__dict__, "ffvt": FFVTConfig(tokens_per_layer=2)})
    torch.manual_seed(0)
    report = benchmark(build_model(config, CLASSES, IMAGE, pretrained=False), image_size=IMAGE, **QUICK)
    cost = report["selector"]
    tokens = (IMAGE // PATCH) ** 2 + 1
    assert (cost["selector"], cost["tokens"], cost["heads"], cost["layers"], cost["dim"]) == (
        selector, tokens, HEADS, 2, DIM)
    assert cost["selector_gflops_per_image"] * 1e9 == SELECTORS[selector].flops(tokens, HEADS, 2, DIM)
    assert cost["selector_ms_per_image"] > 0
    assert cost["selector_share_of_forward_flops"] == pytest.approx(
        cost["selector_gflops_per_image"] / report["gflops_per_image"])
    assert "selector" not in benchmark(tiny_model(), image_size=IMAGE, **QUICK)


def test_flops_of_a_method_passing_parameters_between_modules():
    # VPT hands its prompt parameters to the blocks: FLOP counting must not trip over them.
    config = model_config(**{**TINY.__dict__, "method": "vpt_shallow", "peft": VPTConfig(prompt_length=4)})
    torch.manual_seed(0)
    vpt = build_model(config, CLASSES, IMAGE, pretrained=False)
    plain = count_flops(tiny_model(), IMAGE, torch.device("cpu"))
    assert count_flops(vpt, IMAGE, torch.device("cpu")) > plain  # 4 more tokens in every block


def test_compiled_benchmark_counts_flops_eagerly_and_says_it_compiled(monkeypatch):
    import fgir.tools.bench as bench

    compiler = AotEagerCompiler()
    monkeypatch.setattr(bench, "compile_model", compiler)
    plain, compiled = benchmark(tiny_model(), image_size=IMAGE, **QUICK), benchmark(
        tiny_model(), image_size=IMAGE, compile=True, **QUICK)
    assert compiler.frozen_weights == [True]
    assert (plain["compiled"], compiled["compiled"]) == (False, True)
    assert compiled["gflops_per_image"] == plain["gflops_per_image"]
    assert math.isfinite(compiled["infer_img_per_s"]) and compiled["train_img_per_s"] > 0
