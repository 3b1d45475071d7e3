import pytest
import torch
from torch._dynamo import register_backend

from conftest import tiny_backbone
from fgir.engine.acceleration import compile_model, set_grad_checkpointing
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


def test_grad_checkpointing_keeps_gradients():
    plain, checkpointed = tiny_classifier(), tiny_classifier()
    assert set_grad_checkpointing(checkpointed) == 1
    images = torch.randn(2, 3, 32, 32)
    for model in (plain, checkpointed):
        model.train()(images).square().sum().backward()
    for a, b in zip(plain.parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad)
