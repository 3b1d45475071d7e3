"""`fgir serve`: the Gradio page around a Recognizer, on 127.0.0.1 unless told otherwise and with
no public link unless `share` is asked for.

    app = build_app(Recognizer.from_checkpoint("runs/dafre-glsim"))
    launch(app, port=7860)
"""

from __future__ import annotations

import ipaddress
import os
import sys
import tempfile
from functools import partial
from pathlib import Path

import gradio as gr
import numpy as np
from gradio import processing_utils
from gradio.utils import get_upload_folder
from PIL import Image

from fgir.app.limits import ACCEPTED_FORMATS, MAX_UPLOAD_BYTES, UploadError
from fgir.app.recognizer import TOP_K, Recognizer
from fgir.errors import FgirError

IMAGE_HEIGHT = 280  # pixels: the height of each picture box on the page
# One inference at a time: the model already uses every core, so concurrent ones only compete
# (docs/benchmarks.md, "fgir serve under load"). Requests beyond those running wait in a queue of
# at most MAX_QUEUED; past that Gradio answers "queue is full" at once rather than after a long wait.
DEFAULT_CONCURRENCY = 1
MAX_QUEUED = 64
# Gradio shows pictures with `object-fit: scale-down`, which never enlarges one: a 224 px map would
# sit small in its box. `contain` fills the box and keeps the aspect ratio.
PAGE_CSS = "#heat-map img, #crop img { object-fit: contain; }"


def build_app(recognizer: Recognizer) -> gr.Blocks:
    """The page: a picture in; the top classes, the heat map and (GLSim) the crop out."""
    where = recognizer.map_title
    # Uploads are people's pictures: Gradio's copies live an hour at most and go when the server stops.
    with gr.Blocks(title="fgir", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown(
            f"### What is in the picture?\nThe top {TOP_K} of {len(recognizer.predictor.class_names)} classes. "
            f"Images only ({', '.join(ACCEPTED_FORMATS)}), at most {MAX_UPLOAD_BYTES // 2**20} MB and "
            f"{recognizer.predictor.data.max_image_pixels / 1e6:g} megapixels."
        )
        with gr.Row():
            with gr.Column():
                picture = gr.Image(label="picture", type="filepath", sources=["upload", "clipboard"],
                                   height=IMAGE_HEIGHT, elem_id="picture")
            with gr.Column():
                verdict = gr.Markdown(elem_id="verdict")
                classes = gr.Label(label=f"top {TOP_K}", num_top_classes=TOP_K, elem_id="classes")
                heat_map = gr.Image(label=f"where the model looked: {where}", interactive=False, height=IMAGE_HEIGHT,
                                    elem_id="heat-map")
                crop = gr.Image(label="the crop the model looked at again", interactive=False, height=IMAGE_HEIGHT,
                                elem_id="crop", visible=recognizer.explains)
        if recognizer.examples:
            gr.Examples(recognizer.examples, inputs=picture, label="examples from the test split", elem_id="examples")
        # The answer comes as soon as a picture arrives (upload, paste or example); clearing it
        # clears the answer. preprocess=False: the callback checks the raw upload itself, so a bad
        # file gets our readable message instead of a decoding error inside Gradio.
        picture.change(partial(page_answer, recognizer), inputs=picture, outputs=[verdict, classes, heat_map, crop],
                       preprocess=False, api_name="recognise",
                       api_description="The top classes of one picture and where the model looked.")
    return app


def page_answer(recognizer: Recognizer, upload: dict | None) -> tuple[str, dict[str, float] | None, object, object]:
    """The handler of a new picture: `respond`, with the maps as files in Gradio's cache."""
    verdict, top, heat_map, crop = respond(recognizer, upload)
    return verdict, top, cached_picture(heat_map, "heat_map.webp"), cached_picture(crop, "crop.webp")


def cached_picture(pixels: np.ndarray | None, name: str) -> str | None:
    """`pixels` as the WebP file `name` in Gradio's cache, one file per distinct picture, written
    under a temporary name and renamed into place. (Gradio's own writer for arrays rewrites the file
    of an identical earlier answer in place, so a browser still fetching that one could get it
    truncated: two users sending the same picture, or clicking the same example.)"""
    if pixels is None:
        return None
    with tempfile.TemporaryDirectory() as staging:
        path = Path(staging) / name
        Image.fromarray(pixels).save(path, format="WEBP")
        return processing_utils.save_file_to_cache(path, get_upload_folder())


def respond(recognizer: Recognizer, upload: dict | None) -> tuple[str, dict[str, float] | None, object, object]:
    """Gradio's file payload in, the four outputs out (all empty when the picture was cleared);
    refusals become gr.Error, which the page shows as a message."""
    if not upload or not upload.get("path"):
        return "", None, None, None
    try:
        answer = recognizer.answer(upload["path"], upload.get("orig_name") or "the picture")
    except UploadError as err:
        raise gr.Error(str(err), print_exception=False) from err  # a refusal, not a fault: no traceback in the log
    return verdict_text(recognizer, answer.unknown), answer.top, answer.heat_map, answer.crop


def verdict_text(recognizer: Recognizer, unknown: bool) -> str:
    """Empty unless the answer is "unknown": the Label's heading always names the top class."""
    if not unknown:
        return ""
    return (f"**Unknown**: no class reaches {recognizer.predictor.unknown_below:.0%}; "
            "the closest ones are listed below.")


def host_warning(host: str, share: bool) -> str | None:
    """What to tell the user when the page can be reached from beyond this machine."""
    if share:
        return "warning: --share opens a public link: anyone with it can use this demo"
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        loopback = False
    if not loopback:
        return f"warning: serving on {host}: anyone who can reach this machine can use this demo (127.0.0.1 keeps it local)"
    return None


def launch(app: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, share: bool = False, block: bool = True,
           concurrency: int = DEFAULT_CONCURRENCY) -> str:
    """Start the server and return its local URL; with `block=False` it runs in a background thread
    until `app.close()`. `concurrency` pictures are answered at once; the others wait their turn."""
    warning = host_warning(host, share)
    if warning:
        print(warning, file=sys.stderr)
    app.queue(default_concurrency_limit=concurrency, max_size=MAX_QUEUED)
    app.launch(server_name=host, server_port=port, share=share, max_file_size=MAX_UPLOAD_BYTES,
               prevent_thread_lock=not block, ssr_mode=False, quiet=not block, css=PAGE_CSS)
    return app.local_url


def serve(checkpoint: str | os.PathLike, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
          device: str = "auto", unknown_below: float | None = None, weights: str | os.PathLike | None = None,
          concurrency: int = DEFAULT_CONCURRENCY, onnx: bool = False) -> None:
    """`fgir serve`: load the checkpoint (or, with `onnx`, an ONNX file from `fgir export onnx`, which
    shows no maps) and serve it until interrupted."""
    if concurrency < 1:
        raise FgirError(f"--concurrency must be at least 1, got {concurrency}")
    if onnx:
        from fgir.tools.onnx_predictor import onnx_predictor

        recognizer = Recognizer.from_predictor(onnx_predictor(checkpoint, unknown_below=unknown_below))
    else:
        recognizer = Recognizer.from_checkpoint(checkpoint, device=device, unknown_below=unknown_below,
                                                weights=weights)
    launch(build_app(recognizer), host, port, share, concurrency=concurrency)
