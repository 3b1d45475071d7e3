"""End to end in a real browser: the `fgir serve` page on loopback, driven by headless Chromium
(Debian's package, not Playwright's own download) through Playwright: upload, submit, read the
classes, see the pictures; then a file that is no image and one over the size limit, and their
messages. The screenshot is kept as an artifact (the folder is printed; FGIR_TEST_ARTIFACTS
chooses it)."""

import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from fgir.app.limits import MAX_UPLOAD_BYTES
from fgir.app.recognizer import Recognizer
from fgir.app.server import NO_IMAGE, build_app, launch
from fgir.data import build_dataset

from .conftest import CLASS_NAMES, save_tiny_checkpoint

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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_is_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_upload_submit_and_see_the_names_and_pictures_then_a_bad_file_gets_its_message(tiny_config, tmp_path):
    executable = chromium_or_skip()
    # A small dataset on disk, so examples show; 96 px so the screenshot is legible.
    data = tiny_config("data.synthetic.num_classes=6", "data.synthetic.image_size=112", "data.image_size=96").data
    picture = Path(build_dataset(data, "train", transform=None).paths[0])  # not an example: those are kept
    recognizer = Recognizer.from_checkpoint(save_tiny_checkpoint(tmp_path, "glsim", data)[0], device="cpu")
    expected = recognizer.answer(picture, picture.name)
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
                page = browser.new_page()
                page.set_default_timeout(WAIT_MS)
                page.goto(url)
                sync_api.expect(page).to_have_title("fgir")
                sync_api.expect(page.get_by_text("examples from the test split")).to_be_visible()

                page.locator("#picture input[type=file]").set_input_files(str(picture))
                page.get_by_role("button", name="Recognise").click()
                classes = page.locator("#classes")
                sync_api.expect(classes).to_contain_text(list(expected.top)[0])
                for name in expected.top:  # the five most probable, not the sixth
                    sync_api.expect(classes).to_contain_text(name)
                left_out = (set(CLASS_NAMES) - set(expected.top)).pop()
                assert left_out not in classes.inner_text()
                for element, shape in (("#heat-map", expected.heat_map.shape), ("#crop", expected.crop.shape)):
                    image = page.locator(f"{element} img")
                    image.wait_for()
                    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
                    assert image.evaluate("img => [img.naturalHeight, img.naturalWidth]") == list(shape[:2])
                page.screenshot(path=str(artifacts / "serve.png"), full_page=True)
                served_files = [Path(page.locator(f"{element} img").get_attribute("src").split("file=", 1)[1])
                                for element in ("#picture", "#heat-map", "#crop")]
                assert all(file.is_file() for file in served_files)
                print(f"screenshot: {artifacts / 'serve.png'}")

                page.reload()
                page.locator("#picture input[type=file]").set_input_files(str(bad))
                page.get_by_role("button", name="Recognise").click()
                sync_api.expect(page.get_by_text("notes.png is not an image file that can be read")).to_be_visible()
                page.screenshot(path=str(artifacts / "serve_bad_file.png"), full_page=True)

                page.reload()  # too large: the server refuses the upload itself, with Gradio's message
                page.locator("#picture input[type=file]").set_input_files(str(big))
                sync_api.expect(page.get_by_text("maximum allowed size of 10.0 Mb: \"big.png\"")).to_be_visible()
                page.get_by_role("button", name="Recognise").click()
                sync_api.expect(page.get_by_text(NO_IMAGE)).to_be_visible()
            finally:
                browser.close()
    finally:
        app.close()
    assert not port_is_open(port)
    assert not any(file.exists() for file in served_files)  # the upload and the answers are deleted
    leftover = [t for t in set(threading.enumerate()) - threads_before if t.is_alive() and not t.daemon]
    assert leftover == []
