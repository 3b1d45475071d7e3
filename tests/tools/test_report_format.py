"""What `fgir eval` and `fgir calibrate` print: a short summary a person reads, the JSON with --json."""

import json

from test_calibration import overconfident  # noqa: F401 (a fixture)
from test_eval_report import TEST_LABELS, run  # noqa: F401 (a fixture)

from fgir.cli import main
from fgir.tools.calibration import read_calibration


def calibrated_copy(overconfident, tmp_path):  # noqa: F811
    copy = tmp_path / "run" / "checkpoints" / "best.safetensors"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(overconfident[0].read_bytes())
    return copy


def test_calibrate_prints_a_summary_and_the_json_on_request(overconfident, tmp_path, capsys):  # noqa: F811
    copy = calibrated_copy(overconfident, tmp_path)
    assert main(["calibrate", str(copy), "--no-progress"]) == 0
    out = capsys.readouterr().out
    stored = read_calibration(copy)
    assert len(out.splitlines()) <= 8 and not out.lstrip().startswith("{")
    assert out.startswith(f"toy val: 40 images scored ({copy.resolve()})")
    assert f"T = {stored['temperature']:.4g}" in out
    assert f"{stored['nll_before']:.4f} -> {stored['nll_after']:.4f}" in out
    assert f"{stored['ece_before']:.2f}% -> {stored['ece_after']:.2f}%" in out
    assert "stored in the checkpoint" in out

    assert main(["calibrate", str(copy), "--no-progress", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {**read_calibration(copy), "skipped_images": [], "checkpoint": str(copy.resolve())}


def test_eval_prints_a_summary_of_metrics_json_and_the_json_on_request(overconfident, tmp_path, capsys):  # noqa: F811
    copy = calibrated_copy(overconfident, tmp_path)
    assert main(["calibrate", str(copy), "--no-progress", "--json"]) == 0
    capsys.readouterr()
    out_dir = tmp_path / "report"
    assert main(["eval", str(copy), "--out", str(out_dir), "--no-progress"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((out_dir / "metrics.json").read_text())
    lines = out.splitlines()
    assert len(lines) <= 15 and not out.lstrip().startswith("{")
    assert lines[0] == f"toy test: 24 images scored, 4 classes ({copy.resolve()})"
    assert f"  top-1            {metrics['top1']:.2f}%" in lines
    assert f"  top-5            {metrics['top5']:.2f}%" in lines
    assert f"mean class acc   {metrics['mean_class_acc']:.2f}%" in out
    assert (f"NLL              {metrics['nll']:.4f} -> {metrics['nll_calibrated']:.4f} after T = "
            f"{metrics['temperature']:.3g} (fitted on val)") in out
    assert f"ECE              {metrics['ece']:.2f}% -> {metrics['ece_calibrated']:.2f}%" in out
    # 8 training images in 4 classes: every class has fewer than 20, the tail.
    assert "  training images per class: head > 100, tail < 20" in lines
    tail = metrics["long_tail"]["tail"]
    assert (f"  tail             top-1 {tail['top1']:.2f}%, mean class acc {tail['mean_class_acc']:.2f}% "
            "(4 classes, 24 images)") in lines
    assert "  head             no images in this split (0 classes, 0 images)" in lines
    assert "  medium           no images in this split (0 classes, 0 images)" in lines
    assert lines[-1] == (f"written to {out_dir.resolve()}: metrics.json, predictions.csv, confusion.csv, "
                         "per_class.csv, reliability.png, confusion.png, accuracy_vs_frequency.png")
    assert all((out_dir / name).is_file() for name in lines[-1].split(": ", 1)[1].split(", "))

    assert main(["eval", str(copy), "--out", str(tmp_path / "again"), "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads((tmp_path / "again" / "metrics.json").read_text())


def test_eval_summary_counts_skipped_images_and_says_when_uncalibrated(run, tmp_path, capsys):  # noqa: F811
    path, _, _ = run
    (tmp_path / "toy" / "images" / "test_4.png").write_bytes(b"not an image")
    (tmp_path / "toy" / "train.csv").unlink()
    assert main(["eval", str(path), "data.on_error=skip", "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"toy test: {len(TEST_LABELS) - 1} images scored, 3 classes" in out
    assert "skipped: 1 unreadable images (listed in metrics.json)" in out
    assert "(not calibrated: see fgir calibrate)" in out
    assert "head/medium/tail train split unavailable" in out
    assert "accuracy_vs_frequency.png" not in out
