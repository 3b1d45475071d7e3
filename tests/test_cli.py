import csv
import json
import shutil

import pytest

from conftest import tiny_overrides
from fgir.cli import main


def test_train_then_predict_eval_and_bench_from_the_checkpoint_alone(tmp_path, capsys):
    assert main(["train", *tiny_overrides(tmp_path, "train.run_name=cli"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    checkpoint = tmp_path / "runs" / "cli" / "checkpoints" / "best.safetensors"
    assert f"checkpoint:    {checkpoint}" in out and "test top-1" in out
    card = (tmp_path / "runs" / "cli" / "README.md").read_text()  # the model card a finished run gets
    assert card.startswith("---\n") and "library_name: fgir" in card and "synthetic" in card

    image = tmp_path / "synthetic" / "images" / "square" / "test_0.png"
    kept = tmp_path / "kept.png"
    shutil.copy(image, kept)
    moved = tmp_path / "elsewhere"
    shutil.move(tmp_path / "synthetic", moved)  # predict must not need the dataset
    assert main(["predict", str(tmp_path / "runs" / "cli"), str(kept), "--json", "--topk", "2"]) == 0
    predictions = json.loads(capsys.readouterr().out)
    assert len(predictions) == 1 and len(predictions[0]["topk"]) == 2

    assert main(["eval", str(checkpoint), f"data.root={moved}", "--no-progress", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_samples"] == 9 and (tmp_path / "runs" / "cli" / "eval-test" / "predictions.csv").is_file()

    assert main(["bench", str(checkpoint), "--batch-size", "2", "--iters", "1", "--warmup", "1",
                 "--out", str(tmp_path / "bench.json")]) == 0
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert bench["params_total"] == bench["params_trainable"] > 0


def test_user_errors_exit_2_with_one_line_naming_the_culprit(tmp_path, capsys):
    assert main(["train", *tiny_overrides(tmp_path), "train.lrr=0.1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fgir train: error: unknown config key 'train.lrr'") and "did you mean 'train.lr'" in err
    assert main(["predict", str(tmp_path / "nothing.safetensors"), "x.png"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_overrides_may_follow_options(tmp_path, capsys):
    # The override after --no-progress must still be read: its typo is what gets reported.
    assert main(["train", *tiny_overrides(tmp_path), "--no-progress", "train.epochz=1"]) == 2
    assert "unknown config key 'train.epochz'" in capsys.readouterr().err


def test_explain_writes_one_figure_per_image(tmp_path, capsys):
    overrides = tiny_overrides(tmp_path, "model.method=glsim", "model.glsim.top_o=4", "train.epochs=1", "train.run_name=g")
    assert main(["train", *overrides, "--no-progress"]) == 0
    image = tmp_path / "synthetic" / "images" / "disc" / "test_0.png"
    assert main(["explain", str(tmp_path / "runs" / "g"), str(image), "--out", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "test_0_explain.png").is_file()


def test_data_check_exit_status_tells_clean_from_broken(tmp_path, capsys):
    overrides = tiny_overrides(tmp_path)
    assert main(["data", "check", *overrides, "--no-progress"]) == 0  # generates the synthetic set, clean
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("ok")
    (tmp_path / "synthetic" / "images" / "disc" / "test_0.png").write_bytes(b"")
    assert main(["data", "check", *overrides, "--no-progress", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"] and any("test_0.png" in p["message"] or "test.csv" in p["file"] for p in report["problems"])


def test_sweep_picks_an_lr_then_merge_and_analyze_the_chosen_model(tmp_path, capsys):
    overrides = tiny_overrides(tmp_path, "model.method=lora", "model.peft.lora_rank=2", "train.epochs=1")
    assert main(["sweep", *overrides, "--lrs", "0.05", "0.001", "--name", "s", "--no-progress",
                 "--train-val-split", "train.csv"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "runs" / "s" / "sweep.json").read_text())
    assert f"best lr {summary['best_lr']:g}" in out and len(summary["trials"]) == 2
    final = next((tmp_path / "runs" / "s").glob("final_lr_*"))

    merged = tmp_path / "merged.safetensors"
    assert main(["convert", "merge-lora", str(final), str(merged)]) == 0
    assert capsys.readouterr().out.strip() == str(merged)
    image = tmp_path / "synthetic" / "images" / "disc" / "test_0.png"
    assert main(["predict", str(merged), str(image), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["topk"]

    assert main(["analyze", "cka", str(final), str(merged), "--images", str(image.parent), "--features", "cls",
                 "--out", str(tmp_path / "cka.png"), "--device", "cpu"]) == 0
    assert (tmp_path / "cka.png").is_file() and (tmp_path / "cka.csv").is_file()


def test_data_cache_writes_a_dataset_config_to_train_from(tmp_path, capsys):
    overrides = tiny_overrides(tmp_path)
    assert main(["data", "check", *overrides, "--no-progress"]) == 0  # generates the synthetic set
    csv = [*overrides, "data.format=csv", "data.num_classes=3"]
    assert main(["data", "cache", *csv, "--out", str(tmp_path / "cache"), "--workers", "1", "--no-progress"]) == 0
    assert "33 written, 0 already up to date, 0 unreadable" in capsys.readouterr().out
    cached = tmp_path / "cache" / "dataset.yaml"
    assert main(["data", "check", str(cached), "--no-progress"]) == 0


def test_tradeoff_plot_of_finished_runs(tmp_path, capsys):
    for method in ("vit", "linear"):
        assert main(["train", *tiny_overrides(tmp_path, f"model.method={method}", "train.epochs=1",
                                              f"train.run_name={method}"), "--no-progress"]) == 0
    capsys.readouterr()
    runs = [str(tmp_path / "runs" / name) for name in ("vit", "linear")]
    assert main(["analyze", "tradeoff", *runs, "--out", str(tmp_path / "tradeoff.png")]) == 0
    with open(tmp_path / "tradeoff.csv", newline="") as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    trainable = {m: json.loads((tmp_path / "runs" / m / "trainable_params.json").read_text())["trainable"]
                 for m in rows}
    assert {m: int(rows[m]["trainable_params"]) for m in rows} == trainable
    assert trainable["linear"] < trainable["vit"]
    # Same backbone, same forward pass: a linear probe costs what full fine-tuning costs per image.
    assert rows["linear"]["gflops_per_image"] == rows["vit"]["gflops_per_image"]
    assert float(rows["vit"]["gmacs_per_image"]) == pytest.approx(float(rows["vit"]["gflops_per_image"]) / 2)
    assert (tmp_path / "tradeoff.png").is_file()
    assert main(["analyze", "tradeoff", str(tmp_path)]) == 2
    assert "not a finished run" in capsys.readouterr().err
