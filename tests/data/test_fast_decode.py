from PIL import Image

from fgir.config import DataConfig
from fgir.data import build_dataset


def make_dataset(root, fast_decode: bool) -> DataConfig:
    (root / "images").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (400, 320), (200, 30, 30)).save(root / "images" / "big.jpg", quality=95)
    Image.new("RGB", (400, 320), (200, 30, 30)).save(root / "images" / "big.png")
    (root / "train.csv").write_text("class_id,dir\n0,big.jpg\n1,big.png\n")
    return DataConfig(name="mini", format="csv", root=str(root), image_dir="images", val=None, test=None,
                      num_classes=2, image_size=64, resize_ratio=1.25, fast_decode=fast_decode)


def test_fast_decode_reads_large_jpegs_at_a_reduced_scale_above_the_resize_size(tmp_path):
    # resize size 80: 400x320 -> 1/2 (200x160) and 1/4 (100x80) stay >= 80; 1/8 would not.
    fast = build_dataset(make_dataset(tmp_path, True), "train", transform=None)
    assert fast[0][0].size == (100, 80)
    assert fast[1][0].size == (400, 320)  # PNGs have no reduced-scale decoding
    full = build_dataset(make_dataset(tmp_path, False), "train", transform=None)
    assert full[0][0].size == (400, 320)
