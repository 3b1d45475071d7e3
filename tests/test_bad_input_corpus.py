"""Every kind of bad input in tests/corpus through every verb that reads it: an error is one short
message naming the culprit with exit status 2 (never a traceback), an unreadable image under
data.on_error=skip is counted, each command is back within 60 s, and a failed command leaves no
half-written file behind. Runs that need a real process (workers, timing, stderr as a user sees
it) are subprocesses of the CLI; one-kind-per-call checks call `cli.main` in this process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pytest

from app.conftest import save_tiny_checkpoint
from conftest import TINY, save_random_vit, tiny_overrides
from corpus.bad_inputs import (
    BadInput,
    write_checkpoints,
    write_configs,
    write_dataset,
    write_images,
    write_split,
    write_splits,
    write_uploads,
)
from fgir import cli
from fgir.app.limits import MAX_UPLOAD_BYTES
from fgir.data.readers import IMAGE_EXTENSIONS

TIMEOUT_S = 60
BATCH = 4
SRC = str(Path(__file__).resolve().parents[1] / "src")


@dataclass
class Outcome:
    code: int
    out: str
    err: str
    seconds: float


def run_in_process(capsys, *argv: str) -> Outcome:
    start = time.monotonic()
    code = cli.main([str(item) for item in argv])
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err, time.monotonic() - start)


def run_subprocess(*argv: str, cwd: Path | None = None) -> Outcome:
    """`python -m fgir ARGV` from this checkout; killed (and failed) after TIMEOUT_S."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    start = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "fgir", *map(str, argv)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env, cwd=cwd, start_new_session=True)
    try:
        out, err = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"fgir {' '.join(map(str, argv[:2]))} still running after {TIMEOUT_S} s:\n{err[-3000:]}")
    return Outcome(process.returncode, out, err, time.monotonic() - start)


def error_lines(err: str) -> list[str]:
    return [line for line in err.strip().splitlines() if line and not line.startswith("warning: ")]


def assert_refused(outcome: Outcome, verb: str, kind: BadInput) -> None:
    """Exit status 2, a short message that starts as the CLI's and names the culprit (and the
    reason), no traceback, back in time."""
    lines = error_lines(outcome.err)
    assert outcome.code == 2, f"{kind}: exit {outcome.code}\n{outcome.err[-3000:]}"
    assert "Traceback" not in outcome.err, outcome.err
    assert lines and lines[0].startswith(f"fgir {verb.split()[0]}: error: ") and len(lines) <= 3, outcome.err
    assert kind.culprit in outcome.err, f"{kind}: '{kind.culprit}' not named in:\n{outcome.err}"
    assert kind.reason in outcome.err, f"{kind}: '{kind.reason}' not said in:\n{outcome.err}"
    assert outcome.seconds < TIMEOUT_S


def assert_nothing_half_written(folder: Path) -> None:
    assert not [path for path in folder.rglob("*.tmp")], "temporary files left behind"


def dataset_overrides(tmp: Path, root: Path, *extra: str) -> list[str]:
    """The tiny recipe of tests/conftest.py on the csv dataset at `root`, one epoch, no warm-up."""
    synthetic = ("data.format", "data.root", "data.synthetic", "train.epochs", "train.warmup_steps")
    return [*(o for o in tiny_overrides(tmp) if not o.startswith(synthetic)), "data.format=csv", f"data.root={root}",
            "data.class_names=classid_classname.csv", "train.epochs=1", "train.warmup_steps=0", *extra]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The corpus on disk: a good dataset whose images/bad folder holds every image kind, split files
    that list them, a checkpoint trained on the good images, and the other kinds beside."""
    folder = tmp_path_factory.mktemp("corpus")
    root = write_dataset(folder / "dataset")
    images = write_images(root / "images" / "bad")
    listed = [kind for kind in images]
    write_split(root, "all.csv", listed, BATCH)
    for index, kind in enumerate(images):
        write_split(root, f"one{index:02d}.csv", [kind], BATCH)
    assert cli.main(["train", *dataset_overrides(folder, root, "train.run_name=good"), "--no-progress"]) == 0
    checkpoint = folder / "runs" / "good" / "checkpoints" / "best.safetensors"
    adapter, backbone = adapter_checkpoint(folder, root)
    return {
        "folder": folder, "root": root, "checkpoint": checkpoint, "images": images,
        "splits": write_splits(folder / "splits", root),
        "configs": write_configs(folder / "configs"),
        "checkpoints": write_checkpoints(folder / "checkpoints", checkpoint, adapter, backbone),
        "uploads": write_uploads(folder / "uploads"),
    }


def adapter_checkpoint(folder: Path, root: Path) -> tuple[Path, Path]:
    """A LoRA run on a saved "pretrained" backbone file: its adapter-only checkpoint and that file."""
    backbone = folder / "pretrained.safetensors"
    save_random_vit(backbone, **TINY)
    overrides = dataset_overrides(folder, root, "train.run_name=lora", "model.method=lora", "model.pretrained=true",
                                  "model.peft.lora_rank=2", f"model.weights={backbone}")
    assert cli.main(["train", *overrides, "--no-progress"]) == 0
    return folder / "runs" / "lora" / "checkpoints" / "best.safetensors", backbone


def test_the_corpus_has_at_least_40_kinds(corpus):
    kinds = [kind for group in ("images", "splits", "configs", "checkpoints", "uploads") for kind in corpus[group]]
    assert len({kind.kind for kind in kinds}) == len(kinds) >= 40


def each(kinds: list[BadInput], check) -> None:
    """`check(kind)` for every kind; all failures are reported together, one block per kind."""
    failures = []
    for kind in kinds:
        try:
            check(kind)
        except AssertionError as err:
            failures.append(f"--- {kind}: {err}")
    assert not failures, "\n".join(failures)


def unreadable(corpus) -> list[BadInput]:
    return [kind for kind in corpus["images"] if kind.expected == "skip"]


def readable(corpus) -> list[BadInput]:
    return [kind for kind in corpus["images"] if kind.expected == "ok"]


def one_of_each_way(corpus) -> list[BadInput]:
    return [kind for kind in corpus["images"] if kind.kind in ONE_OF_EACH_WAY]


def one_split(corpus, kind: BadInput) -> str:
    return f"one{corpus['images'].index(kind):02d}.csv"


# Images ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_data_check_names_every_unreadable_image_and_none_of_the_readable(corpus):
    root = corpus["root"]
    outcome = run_subprocess("data", "check", *dataset_overrides(corpus["folder"], root, "data.train=all.csv"),
                             "--split", "train", "--no-progress")
    assert outcome.code == 1 and "Traceback" not in outcome.err, outcome.err
    for kind in unreadable(corpus):
        assert kind.culprit in outcome.out, f"{kind} not reported:\n{outcome.out}"
    for kind in readable(corpus):
        assert kind.culprit not in outcome.out, f"{kind} reported:\n{outcome.out}"


# One of each way an image fails: the decoder, the size limit before decoding, Pillow's own bomb limit,
# the file system, a folder. Every verb reads images through fgir.data.read_image: `train` with 0
# workers and the multi-image runs (data check, train under skip, eval under skip, predict FOLDER) take
# every kind; the verbs that stop at the first bad image take one of each way (the corpus stays a few
# minutes on one core).
ONE_OF_EACH_WAY = ("truncated JPEG", "image over data.max_image_pixels", "image over Pillow's bomb limit",
                   "broken symlink", "directory named x.jpg")


@pytest.mark.parametrize("workers", [0, 2])
def test_train_stops_on_each_unreadable_image_in_the_loop(corpus, capsys, workers):
    folder, root = corpus["folder"], corpus["root"]
    kinds = [kind for kind in unreadable(corpus) if workers == 0 or kind.kind in ONE_OF_EACH_WAY]

    def check(kind):
        run = f"fail-{workers}-{corpus['images'].index(kind)}"
        outcome = run_in_process(capsys, "train", *dataset_overrides(
            folder, root, f"data.train={one_split(corpus, kind)}", "data.val=null", "data.test=null",
            "data.preflight=off", f"data.num_workers={workers}", f"train.run_name={run}"), "--no-progress")
        assert_refused(outcome, "train", kind)
        assert not (folder / "runs" / run).exists(), "a stub run folder is left"

    each(kinds, check)
    assert_nothing_half_written(folder / "runs")


@pytest.mark.slow
def test_train_preflight_names_the_unreadable_images_before_any_work(corpus):
    folder, root = corpus["folder"], corpus["root"]
    outcome = run_subprocess("train", *dataset_overrides(folder, root, "data.train=all.csv", "data.preflight=on",
                                                         "train.run_name=preflight"), "--no-progress")
    bad = unreadable(corpus)
    assert outcome.code == 2 and "Traceback" not in outcome.err, outcome.err
    assert f"{len(bad)} of " in outcome.err and "listed images cannot be read" in outcome.err, outcome.err
    shown = [kind for kind in bad if kind.culprit in outcome.err]
    assert len(shown) == 5, outcome.err  # the first five are named, the rest counted
    assert not (folder / "runs" / "preflight").exists()


@pytest.mark.slow
# Under skip the preflight only counts: the loader meets the same images and leaves them out.
@pytest.mark.parametrize("workers, preflight", [(2, "off"), (0, "on")])
def test_train_under_skip_counts_every_unreadable_image_and_trains_on_the_rest(corpus, workers, preflight):
    folder, root = corpus["folder"], corpus["root"]
    run = f"skip-{workers}-{preflight}"
    outcome = run_subprocess("train", *dataset_overrides(
        folder, root, "data.train=all.csv", "data.on_error=skip", f"data.preflight={preflight}",
        f"data.num_workers={workers}", f"train.run_name={run}"), "--no-progress")
    assert outcome.code == 0 and "Traceback" not in outcome.err, outcome.err
    metrics = json.loads((folder / "runs" / run / "metrics.json").read_text())
    epochs = metrics if isinstance(metrics, list) else metrics["epochs"]
    assert [epoch["skipped_images"] for epoch in epochs] == [len(unreadable(corpus))], epochs
    if preflight == "on":
        assert f"{len(unreadable(corpus))} of " in outcome.err, outcome.err


def test_eval_stops_on_an_unreadable_image_in_the_loop(corpus, capsys):
    folder, checkpoint = corpus["folder"], corpus["checkpoint"]

    def check(kind):
        outcome = run_in_process(capsys, "eval", checkpoint, f"data.test={one_split(corpus, kind)}",
                                 "data.preflight=off", "--out", folder / "eval-fail", "--no-progress")
        assert_refused(outcome, "eval", kind)

    each(one_of_each_way(corpus), check)
    assert_nothing_half_written(folder)


@pytest.mark.slow
def test_eval_under_skip_counts_every_unreadable_image(corpus):
    folder = corpus["folder"]
    outcome = run_subprocess("eval", corpus["checkpoint"], "data.test=all.csv", "data.on_error=skip",
                             "data.num_workers=2", "--out", folder / "eval-skip", "--no-progress")
    assert outcome.code == 0 and "Traceback" not in outcome.err, outcome.err
    assert f"skipped: {len(unreadable(corpus))} unreadable images" in outcome.out, outcome.out
    report = json.loads((folder / "eval-skip" / "metrics.json").read_text())
    assert len(report["skipped_images"]) == len(unreadable(corpus))
    listed = len((corpus["root"] / "all.csv").read_text().splitlines()) - 1
    assert report["num_samples"] == listed - len(unreadable(corpus))  # the unusual images are scored


def not_in_a_folder_scan(kind: BadInput) -> bool:
    return not os.path.lexists(kind.path) or kind.path.is_dir() or kind.path.suffix.lower() not in IMAGE_EXTENSIONS


def test_predict_one_file_names_an_unreadable_image_and_answers_the_unusual_ones(corpus, capsys):
    """The kinds a folder scan does not visit (missing, a folder, another extension) and one of each
    way an image fails; the folder run below has the others."""
    def check(kind):
        outcome = run_in_process(capsys, "predict", corpus["checkpoint"], kind.path)
        assert "Traceback" not in outcome.err and outcome.seconds < TIMEOUT_S
        if kind.expected == "ok":
            assert outcome.code == 0 and kind.path.name in outcome.out, outcome.err
        else:  # an unreadable image: named on stderr, exit status 1; a folder with no image: 2
            assert outcome.code in (1, 2), outcome.err
            assert error_lines(outcome.err) == [error_lines(outcome.err)[0]], outcome.err
            assert kind.culprit in outcome.err, outcome.err

    each([kind for kind in corpus["images"] if not_in_a_folder_scan(kind) or kind.kind in ONE_OF_EACH_WAY], check)


@pytest.mark.slow
def test_predict_a_folder_names_each_unreadable_image_on_its_own_line_and_predicts_the_rest(corpus):
    folder = corpus["root"] / "images" / "bad"
    in_folder = [kind for kind in corpus["images"] if not not_in_a_folder_scan(kind)]
    outcome = run_subprocess("predict", corpus["checkpoint"], folder)
    assert outcome.code == 1 and "Traceback" not in outcome.err, outcome.err
    lines = error_lines(outcome.err)
    for kind in in_folder:
        if kind.expected == "ok":
            assert kind.culprit in outcome.out, f"{kind} not predicted:\n{outcome.out}"
        else:
            assert sum(kind.culprit in line for line in lines) == 1, f"{kind} not on a line of its own:\n{outcome.err}"
    assert len(lines) == sum(kind.expected == "skip" for kind in in_folder), outcome.err


def test_explain_refuses_each_unreadable_image_and_explains_the_unusual_ones(corpus, capsys):
    out = corpus["folder"] / "explained"

    def check(kind):
        assert_refused(run_in_process(capsys, "explain", corpus["checkpoint"], kind.path, "--out", out), "explain",
                       kind)
        assert not (out / f"{kind.path.stem}_explain.png").exists()

    each(one_of_each_way(corpus), check)
    assert_nothing_half_written(out)
    explained = run_in_process(capsys, "explain", corpus["checkpoint"], *(k.path for k in readable(corpus)),
                               "--out", out)
    assert explained.code == 0, explained.err
    assert sorted(path.name for path in out.iterdir()) == sorted(f"{k.path.stem}_explain.png" for k in readable(corpus))


@pytest.fixture(scope="module")
def recognizer(corpus):
    from fgir.app.recognizer import Recognizer

    return Recognizer.from_checkpoint(corpus["checkpoint"], device="cpu")


def test_serve_refuses_each_bad_upload_naming_it_and_answers_the_unusual_images(corpus, recognizer):
    from fgir.app.server import respond

    def check(kind):
        upload = {"path": str(kind.path), "orig_name": kind.path.name}
        if kind.expected == "ok":
            assert respond(recognizer, upload)[1], "no classes"
            return
        if not kind.path.is_file():
            return  # a browser uploads file contents only: no folders, links or missing files
        with pytest.raises(gr.Error) as refusal:
            respond(recognizer, upload)
        assert kind.path.name in str(refusal.value) and kind.reason in str(refusal.value), str(refusal.value)

    each(corpus["images"] + corpus["uploads"], check)


@pytest.mark.slow
def test_serve_over_http_refuses_bad_uploads_without_a_traceback(corpus, recognizer, capfd):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from app.conftest import free_port
    from fgir.app.server import build_app, launch

    app = build_app(recognizer)
    client = Client(launch(app, port=free_port(), block=False), verbose=False, download_files=False)
    try:
        def check(kind):
            with pytest.raises(AppError) as refusal:
                client.predict(handle_file(str(kind.path)), api_name="/recognise")
            assert kind.path.name in str(refusal.value) and kind.reason in str(refusal.value), str(refusal.value)

        # Gradio's client refuses a file over the page's size limit before sending it.
        each([kind for kind in corpus["uploads"] if kind.path.stat().st_size <= MAX_UPLOAD_BYTES], check)
    finally:
        client.close()
        app.close()
    assert "Traceback" not in capfd.readouterr().err


# Split files ----------------------------------------------------------------------------------------


def test_each_bad_split_file_is_named_by_data_check_train_and_eval(corpus, capsys):
    folder = corpus["folder"]

    def check(kind):
        overrides = dataset_overrides(folder, corpus["root"], *kind.args)
        checked = run_in_process(capsys, "data", "check", *overrides, "--images", "exists", "--no-progress")
        evaluated = run_in_process(capsys, "eval", corpus["checkpoint"], *kind.args, "--out", folder / "eval-split",
                                   "--no-progress")
        if kind.expected == "ok":  # train reads split files with the reader eval uses
            assert (checked.code, evaluated.code) == (0, 0), checked.out + evaluated.err
            return
        assert checked.code in (1, 2) and kind.culprit in checked.out + checked.err, checked.out + checked.err
        assert "Traceback" not in checked.err
        assert_refused(evaluated, "eval", kind)
        run = f"split-{corpus['splits'].index(kind)}"
        assert_refused(run_in_process(capsys, "train", *overrides, f"train.run_name={run}", "--no-progress"), "train",
                       kind)
        assert not (folder / "runs" / run).exists(), "a stub run folder is left"

    each(corpus["splits"], check)
    assert_nothing_half_written(folder)


# Configs --------------------------------------------------------------------------------------------


def test_each_bad_config_is_refused_naming_the_key_or_file_before_anything_is_written(corpus, capsys, tmp_path):
    def check(kind):
        recipe = [kind.path] if kind.path.suffix == ".yaml" else []
        overrides = dataset_overrides(tmp_path, corpus["root"], *kind.args)
        for verb in kind.verbs:
            outcome = run_in_process(capsys, *verb.split(), *recipe, *overrides, "--no-progress")
            assert_refused(outcome, verb, kind)
        assert not (tmp_path / "runs").exists(), "a run folder was written"

    each(corpus["configs"], check)


# Checkpoints ----------------------------------------------------------------------------------------


def test_each_bad_checkpoint_is_refused_by_predict_eval_explain_and_serve(corpus, capsys, monkeypatch):
    from fgir.app import server

    monkeypatch.setattr(server, "launch", lambda *args, **kwargs: pytest.fail("a bad checkpoint was served"))
    picture = corpus["root"] / "images" / "alpha" / "test_0.png"
    out = corpus["folder"] / "explained-checkpoints"
    argv = {"predict": [picture], "eval": ["--no-progress", "--out", corpus["folder"] / "eval-checkpoint"],
            "explain": [picture, "--out", out], "serve": []}

    def check(kind):
        for verb in kind.verbs:
            assert_refused(run_in_process(capsys, verb, kind.path, *argv[verb]), verb, kind)

    each(corpus["checkpoints"], check)
    assert not out.exists()
    assert_nothing_half_written(corpus["folder"] / "checkpoints")


def test_a_checkpoint_of_another_class_count(corpus, capsys, tmp_path):
    other, _ = save_tiny_checkpoint(tmp_path, "vit")  # six classes
    kind = BadInput("checkpoint of another class count", ("train", "eval"), other, "error", str(other))
    overrides = dataset_overrides(tmp_path, corpus["root"], f"train.init_from={other}", "train.run_name=init")
    assert_refused(run_in_process(capsys, "train", *overrides, "--no-progress"), "train", kind)
    assert not (tmp_path / "runs" / "init").exists()
    refused = run_in_process(capsys, "eval", other, f"data.root={corpus['root']}", "data.format=csv",
                             "data.class_names=classid_classname.csv", "--no-progress")
    names = corpus["root"] / "classid_classname.csv"  # the checkpoint's recipe pins data.num_classes=6
    assert_refused(refused, "eval", BadInput(kind.kind, ("eval",), other, "error", str(names), reason="is 6"))


# Output paths ---------------------------------------------------------------------------------------


def test_an_output_path_of_the_wrong_kind_is_named_as_the_user_gave_it(corpus, capsys, tmp_path):
    """Not the temporary name a file is first written to (`.out.json.x1y2.tmp: Is a directory`)."""
    folder, file = tmp_path / "out.json", tmp_path / "notes.txt"
    folder.mkdir()
    file.write_text("a file where a folder is expected")
    picture = corpus["root"] / "images" / "alpha" / "test_0.png"
    runs = {
        "bench": ["bench", corpus["checkpoint"], "--iters", "1", "--warmup", "0", "--batch-size", "1", "--out", folder],
        "explain": ["explain", corpus["checkpoint"], picture, "--out", file],
        "eval": ["eval", corpus["checkpoint"], "--out", file, "--no-progress"],
    }
    for verb, argv in runs.items():
        culprit = folder if verb == "bench" else file
        kind = BadInput(f"{verb} output path of the wrong kind", (verb,), culprit, "error", str(culprit))
        outcome = run_in_process(capsys, *argv)
        assert_refused(outcome, verb, kind)
        assert ".tmp" not in outcome.err, outcome.err
    assert_nothing_half_written(tmp_path)
