import dataclasses

import numpy as np
import pytest
from PIL import Image

from fgir.app.limits import MAX_UPLOAD_BYTES, UploadError, open_upload
from fgir.app.recognizer import Recognizer
from fgir.data import ImageReadError, read_image
from fgir.tools.predictor import Predictor

from .conftest import save_tiny_checkpoint, tiny_config


def test_an_accepted_image_is_returned_as_read_image_reads_it(picture, tmp_path):
    opened = open_upload(picture, "picture.png")
    assert opened.mode == "RGB" and np.array_equal(np.asarray(opened), np.asarray(read_image(picture)))
    grey = tmp_path / "grey.gif"
    Image.new("L", (9, 7), 128).save(grey)
    assert open_upload(grey, "grey.gif").size == (9, 7)


def test_a_text_file_renamed_png_is_refused_by_its_upload_name(tmp_path):
    fake = tmp_path / "0123abcd"
    fake.write_text("not a picture at all")
    with pytest.raises(UploadError, match=r"^cat\.png is not an image file that can be read \(accepted: JPEG, PNG"):
        open_upload(fake, "cat.png")


def test_the_size_limit_is_checked_before_decoding_and_its_boundary_is_allowed(tmp_path):
    at_limit, over = tmp_path / "at_limit.png", tmp_path / "over.png"
    at_limit.write_bytes(b"\0" * MAX_UPLOAD_BYTES)
    over.write_bytes(b"\0" * (MAX_UPLOAD_BYTES + 1))
    with pytest.raises(UploadError, match=r"^over\.png is 10\.0 MB; the limit is 10 MB$"):
        open_upload(over, "over.png")
    with pytest.raises(UploadError, match="is not an image file"):  # past the size check
        open_upload(at_limit, "at_limit.png")


def test_too_many_pixels_other_formats_and_truncated_files_are_refused(tmp_path):
    huge = tmp_path / "huge.png"
    Image.new("1", (8000, 5001)).save(huge)  # 40,008,000 pixels in a few kB
    with pytest.raises(UploadError, match=r"^huge\.png is 8000 x 5001 pixels; the limit is 40 megapixels$"):
        open_upload(huge, "huge.png")
    ppm = tmp_path / "x.ppm"
    Image.new("RGB", (8, 8)).save(ppm)
    with pytest.raises(UploadError, match=r"^x\.ppm is a PPM image; accepted: JPEG, PNG, WEBP, BMP, GIF, TIFF$"):
        open_upload(ppm, "x.ppm")
    whole = tmp_path / "whole.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(whole)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(UploadError, match=r"^cut\.jpg cannot be decoded: "):
        open_upload(cut, "cut.jpg")


def test_an_mpo_photo_is_accepted_and_its_first_picture_read(tmp_path):
    first, second = Image.new("RGB", (12, 8), (200, 20, 20)), Image.new("RGB", (12, 8), (20, 20, 200))
    photo = tmp_path / "phone.jpg"
    first.save(photo, format="MPO", save_all=True, append_images=[second])
    assert Image.open(photo).format == "MPO"
    opened = open_upload(photo, "phone.jpg")
    assert opened.size == (12, 8) and np.abs(np.asarray(opened).astype(int) - (200, 20, 20)).max() <= 8


def test_serve_and_predict_take_the_pixel_limit_from_the_checkpoint(tmp_path, picture):
    data = dataclasses.replace(tiny_config("vit", tmp_path / "none").data, max_image_pixels=1919)  # picture: 1920
    path, _ = save_tiny_checkpoint(tmp_path, "vit", data)
    with pytest.raises(UploadError, match=r"^picture\.png is 48 x 40 pixels; the limit is 0\.001919 megapixels$"):
        Recognizer.from_checkpoint(path, device="cpu").answer(picture, "picture.png")
    with pytest.raises(ImageReadError, match=r"over the limit of 0\.001919 megapixels \(data\.max_image_pixels=1919;"):
        Predictor.from_checkpoint(path, device="cpu").predict(picture)
