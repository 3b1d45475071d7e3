import pytest
import timm
import torch
from torch._dynamo import register_backend

from conftest import tiny_backbone
from fgir.engine.acceleration import (
    GRAPHS_PER_MODEL,
    MAX_RECOMPILE_LIMIT,
    compile_model,
    set_grad_checkpointing,
    use_channels_last,
)
from fgir.models.classifier import ViTClassifier


@register_backend
def fgir_test_broken_backend(graph_module, example_inputs):
    raise RuntimeError("this backend cannot compile anything")


def tiny_classifier() -> ViTClassifier:
    torch.manual_seed(0)
    return ViTClassifier(tiny_backbone(), 3, zero_init_head=False)


def test_compiled_model_matches_eager_in_training_and_keeps_its_state_dict_keys():
    eager, compiled = tiny_classifier(), tiny_classifier()
    keys = list(compiled.state_dict())
    compile_model(compiled, backend="aot_eager")  # the dynamo path without a C++ toolchain; fast
    images = torch.randn(2, 3, 32, 32)
    for model in (eager, compiled):
        model.train()
        model(images).square().sum().backward()
    assert list(compiled.state_dict()) == keys
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(eager.eval()(images), compiled.eval()(images))


def test_compiler_failure_warns_once_and_runs_eagerly():
    eager, model = tiny_classifier(), tiny_classifier()
    compile_model(model, backend="fgir_test_broken_backend")
    images = torch.randn(2, 3, 32, 32)
    with pytest.warns(RuntimeWarning, match="torch.compile failed .*this backend cannot compile anything.*runs eagerly"):
        out = model(images)
    torch.testing.assert_close(out, eager(images))
    assert model._compiled_call_impl is None  # no second attempt, no second warning


def test_every_compiled_model_gets_its_own_graphs_however_many_architectures_a_process_compiles():
    torch._dynamo.reset()
    graphs = torch._dynamo.utils.counters["stats"]
    images = torch.randn(4, 16)
    with torch._dynamo.config.patch(recompile_limit=8):  # dynamo's default, whatever earlier tests did
        for width in range(8, 16):  # two graphs per model (train, eval): 16 in all, twice dynamo's default
            model = torch.nn.Sequential(torch.nn.Linear(16, width), torch.nn.GELU(), torch.nn.Linear(width, 3))
            compile_model(model, backend="aot_eager")
            before = graphs["unique_graphs"]
            model.train()(images).sum().backward()
            with torch.no_grad():
                model.eval()(images)
            assert graphs["unique_graphs"] == before + 2, f"model of width {width} ran eagerly"


def test_the_shared_graph_allowance_grows_per_model_but_stays_bounded():
    with torch._dynamo.config.patch(recompile_limit=8):
        for _ in range(MAX_RECOMPILE_LIMIT // GRAPHS_PER_MODEL + 5):
            compile_model(torch.nn.Linear(2, 2), backend="aot_eager")
        assert torch._dynamo.config.recompile_limit == MAX_RECOMPILE_LIMIT


def tiny_resnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("resnet18", num_classes=3, layers=[1, 1, 1, 1], channels=[8, 16, 32, 64], stem_width=8)


def test_channels_last_keeps_outputs_gradients_and_state_dict():
    plain, nhwc = tiny_resnet(), tiny_resnet()
    use_channels_last(nhwc)
    assert nhwc.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not plain.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    seen = []
    nhwc.conv1.register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous(
        memory_format=torch.channels_last)))
    images = torch.randn(2, 3, 32, 32)  # an ordinary NCHW batch: the model converts it
    for model in (plain, nhwc):
        model.train()(images).square().sum().backward()
    assert seen == [True]
    for (name, a), b in zip(plain.named_parameters(), nhwc.parameters(), strict=True):
        # NHWC kernels sum in another order: float32 differences of ~1e-4 of the gradient's scale.
        scale = a.grad.abs().max().item()
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-3 * scale, msg=name)
    assert list(nhwc.state_dict()) == list(plain.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(nhwc.eval()(images), plain.eval()(images), rtol=1e-4, atol=1e-5)


def test_grad_checkpointing_keeps_gradients():
    plain, checkpointed = tiny_classifier(), tiny_classifier()
    assert set_grad_checkpointing(checkpointed) == 1
    images = torch.randn(2, 3, 32, 32)
    for model in (plain, checkpointed):
        model.train()(images).square().sum().backward()
    for a, b in zip(plain.parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad)



@pytest.mark.slow
def test_frozen_weight_compilation_matches_eager_and_reaches_inductors_freezing_pass(monkeypatch):
    import torch._inductor.freezing as freezing

    freeze_calls = []
    real_freeze = freezing.freeze
    monkeypatch.setattr(freezing, "freeze", lambda *a, **k: freeze_calls.append(1) or real_freeze(*a, **k))
    eager, compiled = tiny_classifier().eval(), tiny_classifier().eval()
    compile_model(compiled, frozen_weights=True)  # inductor: needs the C++ toolchain the install has
    images = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(compiled(images), eager(images), rtol=1e-4, atol=1e-5)
    assert freeze_calls == [1]  # torch.compile(options={"freezing": True}) alone would leave this empty
    with torch.no_grad():
        torch.testing.assert_close(compiled(images[:1]), eager(images[:1]), rtol=1e-4, atol=1e-5)
    assert freeze_calls == [1, 1]  # a new batch shape: a second static, frozen graph
