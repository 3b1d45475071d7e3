import numpy as np
import pytest
from PIL import Image

from fgir.data.images import ImageReadError, read_image

EXIF_ORIENTATION = 0x0112


def pixels(path, **kwargs) -> np.ndarray:
    image = read_image(path, **kwargs)
    assert image.mode == "RGB"
    return np.asarray(image)


@pytest.mark.parametrize("suffix", ["png", "webp", "gif", "bmp", "tiff"])
def test_lossless_formats_keep_exact_pixels(tmp_path, suffix):
    rng = np.random.default_rng(0)
    # GIF is palette-based: keep to a few colours so the round trip is exact.
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 128, 255], [250, 250, 10]], np.uint8)
    original = palette[rng.integers(0, 4, size=(7, 5))]
    path = tmp_path / f"image.{suffix}"
    Image.fromarray(original).save(path, **({"lossless": True} if suffix == "webp" else {}))
    np.testing.assert_array_equal(pixels(path), original)


def test_jpeg_is_read_close_to_original(tmp_path):
    original = np.full((16, 16, 3), (200, 30, 90), np.uint8)
    Image.fromarray(original).save(tmp_path / "image.jpg", quality=95)
    assert np.abs(pixels(tmp_path / "image.jpg").astype(int) - original).max() <= 3


def test_grayscale_becomes_three_equal_channels(tmp_path):
    Image.fromarray(np.array([[0, 77, 255]], np.uint8)).save(tmp_path / "gray.png")
    np.testing.assert_array_equal(
        pixels(tmp_path / "gray.png")[0], [[0, 0, 0], [77, 77, 77], [255, 255, 255]]
    )


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.array([[[10, 20, 30, 0], [10, 20, 30, 255], [0, 0, 0, 128], [200, 100, 0, 64]]], np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = pixels(tmp_path / "rgba.png")[0].astype(int)
    np.testing.assert_array_equal(out[0], [255, 255, 255])  # fully transparent -> white
    np.testing.assert_array_equal(out[1], [10, 20, 30])  # opaque unchanged
    alpha = rgba[0, 2:, 3:4] / 255
    expected = rgba[0, 2:, :3] * alpha + 255 * (1 - alpha)
    assert np.abs(out[2:] - expected).max() <= 1  # Pillow's integer blending rounds


def test_gray_with_alpha_is_composited_on_white(tmp_path):
    la = np.array([[[0, 0], [0, 255]]], np.uint8)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(pixels(tmp_path / "la.png")[0], [[255, 255, 255], [0, 0, 0]])


def test_palette_with_transparency_is_composited_on_white(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    image.save(tmp_path / "palette.png", transparency=0)
    np.testing.assert_array_equal(pixels(tmp_path / "palette.png")[0], [[255, 255, 255], [0, 0, 255]])


def test_cmyk_is_converted(tmp_path):
    Image.new("CMYK", (3, 3), (0, 255, 255, 0)).save(tmp_path / "cmyk.tiff")  # pure red in CMYK
    np.testing.assert_array_equal(pixels(tmp_path / "cmyk.tiff")[1, 1], [255, 0, 0])


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_sixteen_bit_is_scaled_not_clipped(tmp_path, mode):
    values = np.array([[0, 257, 32896, 65535]])
    dtype = "<u2" if mode == "I;16" else ">u2"
    image = Image.frombytes(mode, (4, 1), values.astype(dtype).tobytes())
    path = tmp_path / "deep.tiff"
    image.save(path)
    assert Image.open(path).mode == mode
    np.testing.assert_array_equal(pixels(path)[0, :, 0], np.rint(values[0] / 257))


def test_sixteen_bit_png_is_scaled(tmp_path):
    Image.fromarray(np.array([[65535, 1028]], np.uint16)).save(tmp_path / "deep.png")
    np.testing.assert_array_equal(pixels(tmp_path / "deep.png")[0, :, 0], [255, 4])


def test_32_bit_integer_mode_is_scaled_from_16_bit_range(tmp_path):
    Image.fromarray(np.array([[65535, 514, 70000]], np.int32)).save(tmp_path / "int.tiff")
    np.testing.assert_array_equal(pixels(tmp_path / "int.tiff")[0, :, 0], [255, 2, 255])


@pytest.mark.parametrize(("orientation", "moved_to"), [(3, (2, 4)), (6, (0, 2)), (8, (4, 0))])
def test_exif_orientation_is_applied(tmp_path, orientation, moved_to):
    # 5 wide, 3 high, red marker at the top-left corner; 6 turns it clockwise, 8 anticlockwise.
    stored = np.zeros((3, 5, 3), np.uint8)
    stored[0, 0] = (255, 0, 0)
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[EXIF_ORIENTATION] = orientation
    path = tmp_path / "turned.png"
    image.save(path, exif=exif)
    out = pixels(path)
    expected_shape = (3, 5, 3) if orientation == 3 else (5, 3, 3)
    assert out.shape == expected_shape
    row, column = moved_to
    np.testing.assert_array_equal(out[row, column], [255, 0, 0])
    assert out.sum() == 255  # the marker moved, nothing else appeared


def test_jpeg_draft_decodes_at_reduced_scale_but_not_below_min_size(tmp_path):
    Image.new("RGB", (400, 300), (0, 200, 0)).save(tmp_path / "big.jpg")
    assert read_image(tmp_path / "big.jpg").size == (400, 300)
    assert read_image(tmp_path / "big.jpg", min_size=(100, 70)).size == (100, 75)  # 1/4 scale
    assert read_image(tmp_path / "big.jpg", min_size=(150, 100)).size == (200, 150)  # 1/2 scale
    assert read_image(tmp_path / "big.jpg", min_size=(300, 300)).size == (400, 300)


def test_jpeg_draft_accounts_for_exif_rotation(tmp_path):
    image = Image.new("RGB", (400, 200), (0, 200, 0))
    exif = image.getexif()
    exif[EXIF_ORIENTATION] = 6
    image.save(tmp_path / "turned.jpg", exif=exif)
    # Upright it is 200 x 400; asking for 100 x 200 allows 1/2 scale, not 1/4.
    assert read_image(tmp_path / "turned.jpg", min_size=(100, 200)).size == (100, 200)


def test_missing_file_names_path(tmp_path):
    path = tmp_path / "nowhere.jpg"
    with pytest.raises(ImageReadError, match="not found") as caught:
        read_image(path)
    assert str(path) in str(caught.value)
    assert isinstance(caught.value, OSError)


def test_empty_file_names_path(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty \(0 bytes\)") as caught:
        read_image(path)
    assert str(path) in str(caught.value)


def test_non_image_names_path(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("these are not pixels")
    with pytest.raises(ImageReadError) as caught:
        read_image(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("suffix", ["jpg", "png"])
def test_truncated_file_fails_at_read(tmp_path, suffix):
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    path = tmp_path / f"cut.{suffix}"
    Image.fromarray(noise).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ImageReadError) as caught:
        read_image(path)
    assert str(path) in str(caught.value)
