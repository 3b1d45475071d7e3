import builtins
import io
import os
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from fgir import cli
from fgir.app import server
from fgir.app.limits import MAX_UPLOAD_BYTES
from fgir.app.recognizer import Recognizer
from fgir.app.server import MAX_QUEUED, build_app, host_warning, launch, respond

from .conftest import free_port


def test_respond_returns_the_top5_the_heat_map_and_the_crop(glsim_checkpoint, picture):
    recognizer = Recognizer.from_checkpoint(glsim_checkpoint[0], device="cpu")
    verdict, top, heat_map, crop = respond(recognizer, {"path": str(picture), "orig_name": "miku.png"})
    answer = recognizer.answer(picture, "miku.png")
    assert verdict == "" and not answer.unknown
    assert top == answer.top and len(top) == 5
    assert np.array_equal(heat_map, answer.heat_map) and np.array_equal(crop, answer.crop)


def test_respond_turns_refusals_into_messages_for_the_page(glsim_checkpoint, tmp_path):
    recognizer = Recognizer.from_checkpoint(glsim_checkpoint[0], device="cpu")
    fake = tmp_path / "upload"
    fake.write_text("a text file renamed .png")
    with pytest.raises(gr.Error, match=r"notes\.png is not an image file that can be read"):
        respond(recognizer, {"path": str(fake), "orig_name": "notes.png"})


def test_the_api_answers_a_picture_and_refuses_a_bad_file_without_a_traceback_in_the_log(glsim_checkpoint, picture,
                                                                                           tmp_path, capfd):
    recognizer = Recognizer.from_checkpoint(glsim_checkpoint[0], device="cpu")
    bad = tmp_path / "notes.png"
    bad.write_text("a text file renamed .png")
    app = build_app(recognizer)
    client = Client(launch(app, port=free_port(), block=False), verbose=False, download_files=False)
    try:
        verdict, top, heat_map, crop = client.predict(handle_file(str(picture)), api_name="/recognise")
        assert [entry["label"] for entry in top["confidences"]] == list(recognizer.answer(picture, "x.png").top)
        assert verdict == "" and heat_map["path"] and crop["path"]
        with pytest.raises(AppError, match=r"notes\.png is not an image file that can be read"):
            client.predict(handle_file(str(bad)), api_name="/recognise")
    finally:
        client.close()
        app.close()
    assert "Traceback" not in capfd.readouterr().err


def test_a_served_answer_file_is_never_rewritten_when_the_same_answer_comes_again(glsim_checkpoint, picture,
                                                                                    monkeypatch):
    """Two users sending the same picture (or clicking the same example) get the same map files: if
    the second answer rewrote them in place, the first user's browser could fetch a truncated file."""
    recognizer = Recognizer.from_checkpoint(glsim_checkpoint[0], device="cpu")
    app = build_app(recognizer)
    client = Client(launch(app, port=free_port(), block=False), verbose=False, download_files=False)
    try:
        served = {Path(answer["path"]) for answer in client.predict(handle_file(str(picture)), api_name="/recognise")[2:]}
        reopened = []
        real_open = io.open

        def spying_open(file, mode="r", *args, **kwargs):  # the server runs in this process: see its writes
            if isinstance(file, str | os.PathLike) and set(mode) & set("wa+") and Path(file) in served:
                reopened.append(Path(file))
            return real_open(file, mode, *args, **kwargs)

        monkeypatch.setattr(io, "open", spying_open)
        monkeypatch.setattr(builtins, "open", spying_open)
        again = {Path(answer["path"]) for answer in client.predict(handle_file(str(picture)), api_name="/recognise")[2:]}
        monkeypatch.undo()
    finally:
        client.close()
        app.close()
    assert len(served) == 2 and reopened == []
    assert again == served  # the same answer is the same files, not a new copy per request


def test_a_cleared_picture_clears_the_answer(glsim_checkpoint):
    recognizer = Recognizer.from_checkpoint(glsim_checkpoint[0], device="cpu")
    for cleared in (None, {"path": None}):
        assert respond(recognizer, cleared) == ("", None, None, None)


def test_under_the_threshold_the_page_says_unknown_and_still_lists_the_closest(glsim_checkpoint, picture):
    path = glsim_checkpoint[0]
    top_probability = max(Recognizer.from_checkpoint(path, device="cpu").answer(picture, "x.png").top.values())
    above = Recognizer.from_checkpoint(path, device="cpu", unknown_below=top_probability + 1e-4)
    verdict, top, _, _ = respond(above, {"path": str(picture), "orig_name": "x.png"})
    assert verdict.startswith(f"**Unknown**: no class reaches {top_probability + 1e-4:.0%};") and len(top) == 5
    below = Recognizer.from_checkpoint(path, device="cpu", unknown_below=top_probability - 1e-4)
    assert respond(below, {"path": str(picture), "orig_name": "x.png"})[0] == ""


@pytest.mark.parametrize("method", ["glsim", "vit"])
def test_the_crop_is_shown_for_glsim_only(method, tmp_path):
    from .conftest import save_tiny_checkpoint

    recognizer = Recognizer.from_checkpoint(save_tiny_checkpoint(tmp_path, method)[0], device="cpu")
    images = {block.label: block for block in build_app(recognizer).blocks.values() if isinstance(block, gr.Image)}
    assert images["the crop the model looked at again"].visible == (method == "glsim")
    assert images["picture"].interactive is not False


@pytest.mark.parametrize(("host", "share", "expected"), [
    ("127.0.0.1", False, None),
    ("127.0.0.2", False, None),
    ("localhost", False, None),
    ("::1", False, None),
    ("0.0.0.0", False, "warning: serving on 0.0.0.0: anyone who can reach this machine can use this demo"),
    ("gpu-box.lan", False, "warning: serving on gpu-box.lan: anyone"),
    ("127.0.0.1", True, "warning: --share opens a public link"),
])
def test_host_warning(host, share, expected):
    warning = host_warning(host, share)
    assert warning == expected if expected is None else warning.startswith(expected)


class RecordingApp:
    local_url = "http://127.0.0.1:7860/"

    def queue(self, **kwargs):
        self.queued = kwargs

    def launch(self, **kwargs):
        self.launched = kwargs


def test_launch_binds_loopback_without_a_public_link_and_with_the_upload_limit(capsys):
    app = RecordingApp()
    assert launch(app) == app.local_url
    assert app.launched["server_name"] == "127.0.0.1" and app.launched["share"] is False
    assert app.launched["max_file_size"] == MAX_UPLOAD_BYTES and app.launched["server_port"] == 7860
    assert capsys.readouterr().err == ""
    launch(app, host="0.0.0.0", port=9000, block=False)
    assert app.launched["server_name"] == "0.0.0.0" and app.launched["prevent_thread_lock"] is True
    assert capsys.readouterr().err.startswith("warning: serving on 0.0.0.0")


def test_cli_serve_passes_its_options(monkeypatch):
    calls = []
    monkeypatch.setattr(server, "serve", lambda *args, **kwargs: calls.append((args, kwargs)))
    assert cli.main(["serve", "runs/x"]) == 0
    assert cli.main(["serve", "runs/y", "--host", "0.0.0.0", "--port", "8001", "--share", "--device", "cpu",
                     "--unknown-below", "0.4", "--concurrency", "2"]) == 0
    assert cli.main(["serve", "model.onnx", "--onnx"]) == 0
    assert calls == [
        (("runs/x",), dict(host="127.0.0.1", port=7860, share=False, device="auto", unknown_below=None, weights=None,
                           concurrency=1, onnx=False)),
        (("runs/y",), dict(host="0.0.0.0", port=8001, share=True, device="cpu", unknown_below=0.4, weights=None,
                           concurrency=2, onnx=False)),
        (("model.onnx",), dict(host="127.0.0.1", port=7860, share=False, device="auto", unknown_below=None,
                               weights=None, concurrency=1, onnx=True)),
    ]


def test_concurrency_sets_how_many_answers_run_at_once_and_the_queue_is_bounded(glsim_checkpoint, capsys):
    app = RecordingApp()
    launch(app)
    assert app.queued == {"default_concurrency_limit": 1, "max_size": MAX_QUEUED}
    launch(app, concurrency=3)
    assert app.queued == {"default_concurrency_limit": 3, "max_size": MAX_QUEUED}
    assert cli.main(["serve", str(glsim_checkpoint[0]), "--concurrency", "0"]) == 2
    assert capsys.readouterr().err.strip() == "fgir serve: error: --concurrency must be at least 1, got 0"


def test_cli_serve_reports_a_missing_checkpoint(tmp_path, capsys):
    assert cli.main(["serve", str(tmp_path / "nothing.safetensors")]) == 2
    assert "fgir serve: error: checkpoint not found:" in capsys.readouterr().err
