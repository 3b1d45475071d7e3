"""The built-in fine-grained toy set: cluttered images whose class is told ONLY by a small detail.

Every image has the same kind of background (random coloured shapes and lines plus noise, drawn
from one distribution for all classes) and one small badge planted at a random position and scale
(a quarter to two fifths of the image side): a light square with a dark shape in it. The badge is
the same for every class except for that shape, so recognising an image means finding the badge
and reading its shape: a localisation problem, like fine-grained recognition. Every shape is its
own mirror image, so the usual horizontal-flip augmentation never turns one class into another.

The badge is easy to spot on purpose: the main demo trains a small ViT from scratch (no pretrained
weights on a machine without network) in a few CPU minutes, so the signal has to be learnable
from a few thousand images. Each image comes from its own random stream keyed by (seed, split,
class, index): the set is a pure function of the SyntheticConfig, and any one image can be
re-rendered on its own.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from fgir.config import ConfigError, DataConfig, SyntheticConfig
from fgir.fileio import atomic_write_csv, atomic_write_text

# Bump whenever the rendering changes: a folder drawn by another version is then refused, not read.
GENERATOR_VERSION = 2
SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
CLASS_NAMES_FILE = "classid_classname.csv"
IMAGE_FOLDER = "images"

# Badge side as a fraction of the image side.
GLYPH_SCALE = (0.25, 0.4)
CLUTTER_SHAPES = (6, 11)
NOISE_STD = 6.0
# The badge is light paper with dark ink; the clutter stays in the mid range so the badge stands out.
PAPER, INK = (245, 245, 245), (15, 15, 15)
CLUTTER_RANGE = (40, 220)
# One shape per class, each symmetric under a left-right flip.
SHAPES = ("disc", "square", "triangle_up", "triangle_down", "plus", "cross", "ring", "bar_h", "bar_v", "diamond")


@dataclass(frozen=True)
class Box:
    """A badge's square in pixels: x0, y0 inclusive, x1, y1 exclusive."""

    x0: int
    y0: int
    x1: int
    y1: int


def class_names(num_classes: int) -> list[str]:
    return list(SHAPES[:num_classes])


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(*CLUTTER_RANGE, size=3))


def draw_clutter(rng: np.random.Generator, size: int) -> Image.Image:
    """A background of random filled shapes and lines; the same distribution for every class."""
    image = Image.new("RGB", (size, size), _colour(rng))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(CLUTTER_SHAPES[0], CLUTTER_SHAPES[1] + 1))):
        kind = int(rng.integers(3))
        x0, y0 = (int(v) for v in rng.integers(-size // 8, size, size=2))
        w, h = (int(v) for v in rng.integers(size // 10, size // 2, size=2))
        xy = [x0, y0, x0 + w, y0 + h]
        if kind == 0:
            draw.ellipse(xy, fill=_colour(rng))
        elif kind == 1:
            draw.rectangle(xy, fill=_colour(rng))
        else:
            draw.line(xy, fill=_colour(rng), width=int(rng.integers(1, 4)))
    return image


def sample_box(rng: np.random.Generator, size: int) -> Box:
    side = int(round(rng.uniform(*GLYPH_SCALE) * size))
    x0, y0 = (int(v) for v in rng.integers(0, size - side + 1, size=2))
    return Box(x0, y0, x0 + side, y0 + side)


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: Box) -> None:
    """The class's dark shape inside the badge, with a margin of a fifth of the badge."""
    side = box.x1 - box.x0
    margin = round(side / 5)
    left, top, right, bottom = box.x0 + margin, box.y0 + margin, box.x1 - 1 - margin, box.y1 - 1 - margin
    cx, cy = (left + right) / 2, (top + bottom) / 2
    stroke = max(2, side // 7)
    if shape == "disc":
        draw.ellipse([left, top, right, bottom], fill=INK)
    elif shape == "square":
        draw.rectangle([left, top, right, bottom], fill=INK)
    elif shape == "triangle_up":
        draw.polygon([(cx, top), (left, bottom), (right, bottom)], fill=INK)
    elif shape == "triangle_down":
        draw.polygon([(left, top), (right, top), (cx, bottom)], fill=INK)
    elif shape == "plus":
        draw.rectangle([left, cy - stroke / 2, right, cy + stroke / 2], fill=INK)
        draw.rectangle([cx - stroke / 2, top, cx + stroke / 2, bottom], fill=INK)
    elif shape == "cross":
        draw.line([left, top, right, bottom], fill=INK, width=stroke)
        draw.line([left, bottom, right, top], fill=INK, width=stroke)
    elif shape == "ring":
        draw.ellipse([left, top, right, bottom], outline=INK, width=stroke)
    elif shape == "bar_h":
        draw.rectangle([left, cy - stroke, right, cy + stroke], fill=INK)
    elif shape == "bar_v":
        draw.rectangle([cx - stroke, top, cx + stroke, bottom], fill=INK)
    elif shape == "diamond":
        draw.polygon([(cx, top), (right, cy), (cx, bottom), (left, cy)], fill=INK)
    else:
        raise ValueError(f"unknown shape '{shape}' (known: {', '.join(SHAPES)})")


def paint_badge(image: Image.Image, shape: str, box: Box) -> Image.Image:
    """A copy of `image` with the badge (light square + the class's dark shape) drawn in `box`."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    draw.rectangle([box.x0, box.y0, box.x1 - 1, box.y1 - 1], fill=PAPER)
    draw_shape(draw, shape, box)
    return out


def add_noise(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    noisy = canvas.astype(np.float32) + rng.normal(0.0, NOISE_STD, size=canvas.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def render_sample(
    config: SyntheticConfig, split: str, class_id: int, index: int, *, with_glyph: bool = True
) -> tuple[np.ndarray, Box]:
    """One image (H, W, 3 uint8) and its badge box, from the stream keyed by (seed, split, class, index).

    `with_glyph=False` draws the identical image without the badge (for checking that the badge is
    the sole class signal)."""
    rng = np.random.default_rng([config.seed, SPLITS.index(split), class_id, index])
    image = draw_clutter(rng, config.image_size)
    box = sample_box(rng, config.image_size)
    if with_glyph:
        image = paint_badge(image, SHAPES[class_id], box)
    return add_noise(rng, np.asarray(image)), box


def _check_config(config: SyntheticConfig) -> None:
    if config.image_size < 16:
        raise ConfigError(f"data.synthetic.image_size must be >= 16, got {config.image_size}")
    for split in SPLITS:
        count = getattr(config, f"{split}_per_class")
        if count < 1:
            raise ConfigError(f"data.synthetic.{split}_per_class must be >= 1, got {count}")
    if not 2 <= config.num_classes <= len(SHAPES):
        raise ConfigError(f"data.synthetic.num_classes must be in [2, {len(SHAPES)}], got {config.num_classes}")


def manifest(config: SyntheticConfig) -> dict:
    return {"generator_version": GENERATOR_VERSION, "config": dataclasses.asdict(config)}


def is_generated(data: DataConfig) -> bool:
    """Whether `data.root` holds the set that `data.synthetic` describes; reads the manifest only."""
    return _read_manifest(Path(data.root)) == manifest(data.synthetic)


def generate(config: SyntheticConfig, folder: str | os.PathLike) -> None:
    """Write the whole set into `folder` (created), manifest last. Images are written directly, so
    `folder` should be a staging folder; `ensure_synthetic` takes care of that."""
    _check_config(config)
    folder = Path(folder)
    names = class_names(config.num_classes)
    rows: dict[str, list[list[object]]] = {split: [] for split in SPLITS}
    total = config.num_classes * sum(getattr(config, f"{s}_per_class") for s in SPLITS)
    # delay: the bar only appears when generation is slow enough to be worth watching.
    with tqdm(total=total, desc=f"generating synthetic set in {folder}", delay=2.0, unit="img") as bar:
        for class_id, name in enumerate(names):
            (folder / IMAGE_FOLDER / name).mkdir(parents=True, exist_ok=True)
            for split in SPLITS:
                for index in range(getattr(config, f"{split}_per_class")):
                    pixels, box = render_sample(config, split, class_id, index)
                    relative = f"{IMAGE_FOLDER}/{name}/{split}_{index}.png"
                    # Written in place: the folder being filled is a staging folder renamed
                    # into position only when complete (see ensure_synthetic).
                    Image.fromarray(pixels).save(folder / relative, compress_level=1)
                    rows[split].append([class_id, relative, box.x0, box.y0, box.x1, box.y1])
                    bar.update()
    header = ["class_id", "dir", "x0", "y0", "x1", "y1"]
    for split in SPLITS:
        atomic_write_csv(folder / f"{split}.csv", header, rows[split])
    atomic_write_csv(folder / "train_val.csv", header, rows["train"] + rows["val"])
    atomic_write_csv(folder / CLASS_NAMES_FILE, ["class_id", "class_name"], enumerate(names))
    atomic_write_text(folder / MANIFEST, json.dumps(manifest(config), indent=2) + "\n")


def _read_manifest(root: Path) -> dict | None:
    try:
        return json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def ensure_synthetic(data: DataConfig) -> DataConfig:
    """Generate the set into `data.root` unless it is there; return the config to read it.

    Generation happens in a temporary sibling folder that is renamed into place when complete, so
    an interrupted run never leaves half a dataset. An existing set is never replaced: one generated
    with other parameters (its manifest.json differs) is refused, naming them, and so is a non-empty
    `data.root` that is not a synthetic set.
    """
    root = Path(data.root)
    wanted = manifest(data.synthetic)
    found = _read_manifest(root)
    if found is None and root.exists() and any(root.iterdir()):
        raise ConfigError(
            f"data.root '{root}' is not empty and holds no synthetic set ({MANIFEST} missing); "
            "point data.root at an empty or new folder"
        )
    if found is None:
        _generate_into_place(data.synthetic, root)
    elif found != wanted:
        raise ConfigError(f"data.root '{root}' holds a synthetic set generated with other parameters "
                          f"({_differences(found, wanted)}); it is not replaced: point data.root at another "
                          f"folder, or delete {root} to generate it anew")
    return dataclasses.replace(
        data,
        format="csv",
        image_dir=".",
        class_names=CLASS_NAMES_FILE,
        num_classes=data.synthetic.num_classes,
    )


def _differences(found: dict, wanted: dict) -> str:
    """What differs between the manifest of a set on disk and the one asked for, key by key."""
    if found.get("generator_version") != wanted["generator_version"]:
        return (f"generator version {found.get('generator_version')} there, {wanted['generator_version']} in this "
                "fgir: the images are drawn differently")
    there = found.get("config", {})
    return "; ".join(f"data.synthetic.{key}={there.get(key)} there, {value} here"
                     for key, value in wanted["config"].items() if there.get(key) != value) or f"its {MANIFEST} differs"


def _generate_into_place(config: SyntheticConfig, root: Path) -> None:
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.generating."))
    try:
        generate(config, staging)
        try:
            os.rename(staging, root)  # replaces `root` only if it is an empty folder
        except OSError:
            # Another process (e.g. another rank) finished first; keep its set if it matches.
            if _read_manifest(root) != manifest(config):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
