"""End to end in a real browser: the `fgir serve` page on loopback, driven by headless Chromium
(Debian's package, not Playwright's own download) through Playwright: upload (and nothing else),
read the classes, see the maps filling their boxes; an example; then a file that is no image and
one over the size limit, and their messages. The screenshots are kept as artifacts (the folder is
printed; FGIR_TEST_ARTIFACTS chooses it)."""

import os
import shutil
import socket
import subprocess
import threading
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fgir.app.limits import MAX_UPLOAD_BYTES
from fgir.app.recognizer import Recognizer
from fgir.app.server import build_app, launch
from fgir.data import build_dataset

from .conftest import CLASS_NAMES, free_port, save_tiny_checkpoint

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
WAIT_MS = 60_000  # generous: two shared cores; a hung page fails rather than hangs


def chromium_or_skip() -> str:
    """Debian's Chromium, installed with apt-get when missing and possible."""
    if not CHROMIUM.exists():
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip(f"no {CHROMIUM}, and apt-get cannot install it here (needs root): apt-get install chromium")
        result = subprocess.run("apt-get update && apt-get install -y chromium", shell=True, capture_output=True,
                                text=True, timeout=600)
        if result.returncode != 0 or not CHROMIUM.exists():
            pytest.skip(f"apt-get install chromium failed: {result.stderr.strip()[-300:]}")
    return str(CHROMIUM)


def port_is_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def drawn_extent(box_png: bytes) -> tuple[int, int, int, int]:
    """Height and width of what is drawn in a screenshot of a picture's box (the pixels unlike
    the box's background, its most common colour), and the box's own height and width, all within
    a margin of 2 pixels (the frame's border may show at the edge). The box's label and progress
    indicator, which float over the picture, must be hidden in the screenshot."""
    pixels = np.asarray(Image.open(BytesIO(box_png)).convert("RGB")).astype(int)[2:-2, 2:-2]
    colours, counts = np.unique(pixels.reshape(-1, 3), axis=0, return_counts=True)
    drawn = np.abs(pixels - colours[counts.argmax()]).max(axis=2) > 8
    rows, columns = np.flatnonzero(drawn.any(axis=1)), np.flatnonzero(drawn.any(axis=0))
    return rows[-1] - rows[0] + 1, columns[-1] - columns[0] + 1, *drawn.shape


def wait_for_picture(page, element: str, replacing: str | None = None):
    """The picture in `element` once it has loaded (and, with `replacing`, once its source is no
    longer that one: a new answer replaces the picture after the classes are shown)."""
    page.wait_for_function("([selector, old]) => { const img = document.querySelector(selector); "
                           "return img !== null && img.src !== old && img.complete && img.naturalWidth > 0; }",
                           arg=[f"{element} img", replacing])
    return page.locator(f"{element} img")


def test_an_upload_alone_shows_the_names_and_the_maps_at_display_size_then_a_bad_file_gets_its_message(
        tiny_config, tmp_path):
    executable = chromium_or_skip()
    # A small dataset on disk, so examples show; 96 px so the screenshot is legible.
    data = tiny_config("data.synthetic.num_classes=6", "data.synthetic.image_size=112", "data.image_size=96").data
    train = build_dataset(data, "train", transform=None)
    picture = Path(train.paths[0])  # not an example: those are kept
    recognizer = Recognizer.from_checkpoint(save_tiny_checkpoint(tmp_path, "glsim", data)[0], device="cpu")
    expected = recognizer.answer(picture, picture.name)
    # Noise to the edges, so the drawn part of every map shows in its box's screenshot.
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 120, 3), dtype=np.uint8)).save(noise)
    bad = tmp_path / "notes.png"
    bad.write_text("a text file renamed .png")
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (MAX_UPLOAD_BYTES + 1))
    artifacts = Path(os.environ.get("FGIR_TEST_ARTIFACTS", tmp_path / "artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)

    threads_before = set(threading.enumerate())
    app, port = build_app(recognizer), free_port()
    url = launch(app, "127.0.0.1", port, block=False)
    try:
        assert url == f"http://127.0.0.1:{port}/"
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                page.set_default_timeout(WAIT_MS)
                page.goto(url)
                sync_api.expect(page).to_have_title("fgir")
                sync_api.expect(page.get_by_text("examples from the test split")).to_be_visible()

                page.locator("#picture input[type=file]").set_input_files(str(picture))  # no click after it
                classes = page.locator("#classes")
                sync_api.expect(classes).to_contain_text(list(expected.top)[0])
                for name in expected.top:  # the five most probable, not the sixth
                    sync_api.expect(classes).to_contain_text(name)
                left_out = (set(CLASS_NAMES) - set(expected.top)).pop()
                assert left_out not in classes.inner_text()
                for element, shape in (("#heat-map", expected.heat_map.shape), ("#crop", expected.crop.shape)):
                    image = wait_for_picture(page, element)
                    assert image.evaluate("img => [img.naturalHeight, img.naturalWidth]") == list(shape[:2])
                page.screenshot(path=str(artifacts / "serve.png"), full_page=True)
                served_files = [Path(page.locator(f"{element} img").get_attribute("src").split("file=", 1)[1])
                                for element in ("#picture", "#heat-map", "#crop")]
                assert all(file.is_file() for file in served_files)
                print(f"screenshot: {artifacts / 'serve.png'}")

                # A second upload replaces the answer; each map is drawn as large as its box allows,
                # in its own proportions, although it has fewer pixels than the box.
                first_sources = {element: page.locator(f"{element} img").get_attribute("src")
                                 for element in ("#heat-map", "#crop")}
                page.locator("#picture input[type=file]").set_input_files(str(noise))
                noise_answer = recognizer.answer(noise, noise.name)
                sync_api.expect(classes).to_contain_text(list(noise_answer.top)[0])
                for element, shape in (("#heat-map", noise_answer.heat_map.shape), ("#crop", noise_answer.crop.shape)):
                    image = wait_for_picture(page, element, replacing=first_sources[element])
                    assert image.evaluate("img => [img.naturalHeight, img.naturalWidth]") == list(shape[:2])
                    overlays_hidden = (f"{element} label, {element} [data-testid=status-tracker] "
                                       "{ visibility: hidden !important; }")
                    screenshot = image.screenshot(style=overlays_hidden, animations="disabled")
                    height, width, box_height, box_width = drawn_extent(screenshot)
                    assert box_height > shape[0] and box_width > shape[1]
                    assert height >= box_height - 2 or width >= box_width - 2, (element, height, width)
                    assert abs(height / width - shape[0] / shape[1]) < 0.05, (element, height, width)
                page.screenshot(path=str(artifacts / "serve_noise.png"), full_page=True)

                page.reload()  # an example is answered on its own too
                example = Path(recognizer.examples[1])
                page.locator("#examples button.gallery-item").nth(1).click()
                sync_api.expect(classes).to_contain_text(list(recognizer.answer(example, example.name).top)[0])

                page.reload()
                page.locator("#picture input[type=file]").set_input_files(str(bad))
                sync_api.expect(page.get_by_text("notes.png is not an image file that can be read")).to_be_visible()
                page.screenshot(path=str(artifacts / "serve_bad_file.png"), full_page=True)

                page.reload()  # too large: the server refuses the upload itself, with Gradio's message
                page.locator("#picture input[type=file]").set_input_files(str(big))
                sync_api.expect(page.get_by_text("maximum allowed size of 10.0 Mb: \"big.png\"")).to_be_visible()
            finally:
                browser.close()
    finally:
        app.close()
    assert not port_is_open(port)
    assert not any(file.exists() for file in served_files)  # the upload and the answers are deleted
    leftover = [t for t in set(threading.enumerate()) - threads_before if t.is_alive() and not t.daemon]
    assert leftover == []
