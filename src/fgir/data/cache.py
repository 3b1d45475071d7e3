"""`fgir data cache`: a pre-resized copy of a dataset whose images are far larger than training
needs (iNat, NABirds: 1000+ px photos for 224 px training).

Every image of every configured split is decoded once (upright, RGB), shrunk so its short side is
the size the transforms start from (`resize_size`: 300 for 224), and written under the cache
folder with the same relative path; `dataset.yaml` there describes the same dataset with the image
folder pointing at the cache: where the data is (LOCATION_KEYS), nothing about how a recipe trains
on it (image size, augmentation, normalisation, batch), so a recipe that includes it keeps its own.
Each file is written to a temporary name and renamed, and files newer than their source are kept, so
an interrupted run just continues.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml
from PIL import Image
from tqdm import tqdm

from fgir.config import ConfigError, DataConfig, absolute_path
from fgir.data.datasets import SPLITS, build_dataset, image_root
from fgir.data.images import ImageReadError, read_image
from fgir.data.transforms import resize_size
from fgir.fileio import atomic_path, atomic_write_text

JPEG_QUALITY = 95
# What a dataset file holds: which dataset and where its splits, images and class names are.
LOCATION_KEYS = ("name", "format", "root", "image_dir", "train", "val", "test", "class_names", "num_classes")


@dataclass
class CacheResult:
    out_dir: Path
    config_path: Path
    written: int = 0
    up_to_date: int = 0
    failed: list[str] = field(default_factory=list)  # one message per unreadable image, naming it


def cache_dataset(data: DataConfig, out_dir: str | os.PathLike, *, short_side: int | None = None,
                  workers: int | None = None, progress: bool = True) -> CacheResult:
    """Write the pre-resized copy of every configured split of `data` into `out_dir`."""
    if data.format == "synthetic":
        raise ConfigError("data.format=synthetic: the built-in set is generated at its final size; nothing to cache")
    short_side = short_side or resize_size(data)
    out = Path(out_dir).resolve()
    jobs: dict[str, str] = {}  # cached file -> source image
    for split in SPLITS:
        split_name = getattr(data, split)
        if split_name is None:
            continue
        source_root = image_root(data, split_name).resolve()
        target_root = out / "images" / (split_name if data.format == "folder" else "")
        for path in build_dataset(data, split, transform=None).paths:
            relative = os.path.relpath(path, source_root)
            if relative.startswith(".."):
                raise ConfigError(f"image {path} lies outside the image folder {source_root}; cannot mirror it")
            jobs[str(target_root / relative)] = path

    result = CacheResult(out, out / "dataset.yaml")
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        outcomes = pool.map(cache_image, jobs.values(), jobs.keys(), [short_side] * len(jobs), chunksize=16)
        for outcome in tqdm(outcomes, total=len(jobs), desc="cache", unit="img", disable=not progress):
            if outcome == "written":
                result.written += 1
            elif outcome == "up to date":
                result.up_to_date += 1
            else:
                result.failed.append(outcome)

    cached = replace(data, root=absolute_path(data.root), image_dir=str(out / "images"))
    if data.format == "folder":
        class_names = absolute_path(Path(data.root) / data.class_names) if data.class_names else None
        cached = replace(data, root=str(out / "images"), class_names=class_names)
    section = {key: getattr(cached, key) for key in LOCATION_KEYS}
    atomic_write_text(result.config_path, yaml.safe_dump({"data": section}, sort_keys=False))
    return result


def cache_image(source: str, target: str, short_side: int) -> str:
    """'written', 'up to date', or the error message naming the unreadable source."""
    if os.path.exists(target) and os.path.getmtime(target) >= os.path.getmtime(source):
        return "up to date"
    try:
        # Draft decoding: a JPEG is decoded straight at a reduced scale still >= short_side.
        image = read_image(source, min_size=(short_side, short_side))
    except ImageReadError as error:
        return str(error)
    scale = short_side / min(image.size)
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    with atomic_path(target) as tmp:
        # The name keeps its extension, so Pillow picks the format from it (JPEG stays JPEG, PNG PNG).
        image.save(tmp, format=Image.registered_extensions().get(Path(target).suffix.lower(), "PNG"),
                   **({"quality": JPEG_QUALITY} if Path(target).suffix.lower() in (".jpg", ".jpeg") else {}))
    return "written"
