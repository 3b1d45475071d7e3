"""`fgir export onnx` on checkpoints written before the plugin redesign: `--onnx` predictions are the
checkpoint's, bad inputs exit 2. Every method's export parity (1e-4, dynamic batch) is a contract in
tests/methods/test_contracts.py."""

import json
import shutil
from pathlib import Path

import onnx
from PIL import Image
from safetensors.torch import load_file

from fgir import cli, load_onnx
from fgir.tools.onnx_export import export_onnx
from fgir.tools.predictor import Predictor

FIXTURES = Path(__file__).parent.parent / "fixtures" / "checkpoints_v1"
BACKBONE = FIXTURES / "backbone_vit_tiny_32.safetensors"
IMAGES = load_file(FIXTURES / "images.safetensors")["images"]


def test_the_onnx_predictor_answers_as_the_checkpoint_with_its_names_and_temperature(tmp_path):
    checkpoint = FIXTURES / "glsim.safetensors"
    export_onnx(checkpoint, tmp_path / "glsim.onnx")
    metadata = {p.key: p.value for p in onnx.load(tmp_path / "glsim.onnx").metadata_props}
    assert json.loads(metadata["fgir.class_names"]) == ["a", "b", "c"] and metadata["fgir.method"] == "glsim"

    image = tmp_path / "x.png"
    Image.fromarray((IMAGES[0].permute(1, 2, 0).clamp(0, 1) * 255).byte().numpy()).save(image)
    ours = load_onnx(str(tmp_path / "glsim.onnx")).predict([image], topk=3)[0]
    theirs = Predictor.from_checkpoint(checkpoint, device="cpu").predict([image], topk=3)[0]
    assert [s.class_name for s in ours.topk] == [s.class_name for s in theirs.topk]
    for a, b in zip(ours.topk, theirs.topk, strict=True):
        assert abs(a.probability - b.probability) < 1e-5


def test_cli_export_then_predict_with_onnx_and_bad_inputs_exit_2(tmp_path, capsys):
    checkpoint = tmp_path / "vit.safetensors"
    shutil.copy(FIXTURES / "vit.safetensors", checkpoint)
    out = tmp_path / "vit.onnx"
    assert cli.main(["export", "onnx", str(checkpoint), str(out)]) == 0
    assert "onnxruntime vs PyTorch max |diff|" in capsys.readouterr().out

    image = tmp_path / "x.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(image)
    assert cli.main(["predict", "--json", str(checkpoint), str(image)]) == 0
    expected = json.loads(capsys.readouterr().out)
    assert cli.main(["predict", "--onnx", "--json", str(out), str(image)]) == 0
    got = json.loads(capsys.readouterr().out)
    assert [c["class_name"] for c in got[0]["topk"]] == [c["class_name"] for c in expected[0]["topk"]]

    for argv, culprit in [(["export", "onnx", str(checkpoint), str(tmp_path)], f"{tmp_path} is a folder"),
                          (["predict", "--onnx", str(checkpoint), str(image)], f"{checkpoint}: not a readable ONNX"),
                          (["predict", "--onnx", str(tmp_path / "none.onnx"), str(image)], "no such ONNX file")]:
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert culprit in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_an_onnx_file_from_elsewhere_is_refused_naming_the_missing_metadata(tmp_path, capsys):
    export_onnx(FIXTURES / "vit.safetensors", tmp_path / "vit.onnx")
    proto = onnx.load(tmp_path / "vit.onnx")
    del proto.metadata_props[:]
    onnx.save(proto, tmp_path / "plain.onnx")
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32)).save(image)
    assert cli.main(["predict", "--onnx", str(tmp_path / "plain.onnx"), str(image)]) == 2
    assert "without fgir's metadata (fgir.class_names" in capsys.readouterr().err
