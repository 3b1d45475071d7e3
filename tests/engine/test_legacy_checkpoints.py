"""Checkpoints of every method written by an earlier version of fgir (tests/fixtures/checkpoints_v1,
see its README) still load and give the logits that version computed."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fgir.engine.checkpoint import restore_model

FIXTURES = Path(__file__).parent.parent / "fixtures" / "checkpoints_v1"
EXPECTED = json.loads((FIXTURES / "expected_logits.json").read_text())


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_a_checkpoint_of_an_earlier_version_predicts_as_it_did(method):
    model, checkpoint = restore_model(FIXTURES / f"{method}.safetensors",
                                      weights=FIXTURES / "backbone_vit_tiny_32.safetensors")
    assert checkpoint.config.model.method == method and checkpoint.class_names == ["a", "b", "c"]
    with torch.no_grad():
        logits = model.eval()(load_file(FIXTURES / "images.safetensors")["images"])
    torch.testing.assert_close(logits, torch.tensor(EXPECTED[method]), rtol=0, atol=1e-6)
