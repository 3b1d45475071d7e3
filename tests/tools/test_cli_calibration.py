"""`fgir predict --unknown-below` and the long-tail / calibration fields `fgir eval` prints."""

import json

from test_calibration import overconfident  # noqa: F401 (a fixture)

from fgir.cli import main
from fgir.tools.calibration import calibrate_checkpoint
from fgir.tools.predictor import UNKNOWN_LABEL


def test_predict_unknown_below(overconfident, tmp_path, capsys):  # noqa: F811
    _, _, config = overconfident
    path = tmp_path / "copy.safetensors"
    path.write_bytes(overconfident[0].read_bytes())
    calibrate_checkpoint(path, progress=False)  # probabilities below 1, so that "< 1" is unknown
    images = [f"{config.data.root}/{line.split(',')[1]}" for line in open(f"{config.data.root}/test.csv").read().split()[1:]]
    assert main(["predict", str(path), *images[:3], "--json", "--unknown-below", "1"]) == 0
    decoded = json.loads(capsys.readouterr().out)
    assert len(decoded) == 3 and all(d["unknown"] for d in decoded)
    assert main(["predict", str(path), images[0], "--unknown-below", "1"]) == 0
    assert UNKNOWN_LABEL in capsys.readouterr().out
    assert main(["predict", str(path), images[0], "--unknown-below", "0"]) == 0
    assert UNKNOWN_LABEL not in capsys.readouterr().out
    assert main(["predict", str(path), images[0], "--unknown-below", "50"]) == 2
    assert "unknown_below is a probability in [0, 1], got 50" in capsys.readouterr().err


def test_eval_prints_long_tail_and_calibration(overconfident, tmp_path, capsys):  # noqa: F811
    path, _, _ = overconfident
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(path.read_bytes())
    temperature = calibrate_checkpoint(copy, progress=False)["temperature"]
    assert main(["eval", str(copy), "data.long_tail.head_above=5", "data.long_tail.tail_below=2", "--out", str(tmp_path / "out"),
                 "--no-progress", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["long_tail"]["head_above"] == 5 and report["long_tail"]["train_images"] == 8
    assert set(report["long_tail"]) >= {"head", "medium", "tail"}
    assert report["temperature"] == temperature and report["nll_calibrated"] < report["nll"]


def test_calibrate_verb(overconfident, tmp_path, capsys):  # noqa: F811
    path, _, _ = overconfident
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(path.read_bytes())
    assert main(["calibrate", str(copy), "--no-progress", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "val" and result["temperature"] > 1 and result["ece_after"] < result["ece_before"]
    assert main(["predict", str(copy), "--json", str(path.parent.parent.parent / "toy" / "images" / "test_0.png")]) == 0
    assert json.loads(capsys.readouterr().out)[0]["topk"][0]["probability"] < 0.99  # flattened by T
    assert main(["calibrate", str(copy), "--split", "test", "data.test=nothing.csv", "--no-progress"]) == 2
    assert "nothing.csv" in capsys.readouterr().err
