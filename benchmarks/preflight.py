"""Cost per image of `data.preflight`'s check against decoding, and thread vs process pools.

    .venv/bin/python benchmarks/preflight.py --images 4000            # CUB-like JPEGs it writes
    .venv/bin/python benchmarks/preflight.py --images 4000 --cold     # read from the disk each time
    .venv/bin/python benchmarks/preflight.py --folder DIR             # your own images

Generated images are 500 x 375 JPEGs (CUB-200-2011's typical size) with smooth content and noise,
quality 90. Before each timed pass the files are read (a warm page cache) or, with `--cold`,
evicted from the page cache (`posix_fadvise`, these files only), so the disk is read again.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from fgir.config import DataConfig
from fgir.data.images import read_image
from fgir.data.preflight import image_problem, image_problems
from fgir.data.readers import IMAGE_EXTENSIONS

LIMIT = DataConfig.max_image_pixels


def write_images(folder: Path, count: int) -> list[str]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:375, 0:500]
    paths = []
    for i in range(count):
        base = np.stack([(x + 7 * i) % 256, (y + 3 * i) % 256, (x + y) % 256], axis=-1)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(str(path))
    return paths


def warm(paths: list[str]) -> None:
    for path in paths:
        Path(path).read_bytes()


def evict(paths: list[str]) -> None:
    """Drop the files' pages from the page cache (theirs only: no root needed, nothing else touched)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def header_only(path: str) -> None:
    with Image.open(path) as image:
        image.size  # noqa: B018 (the header is parsed by open)


def one_by_one(function: Callable[[str], object]) -> Callable[[list[str]], object]:
    return lambda paths: [function(path) for path in paths]


def in_threads(paths: list[str]) -> None:
    image_problems(paths, LIMIT, progress=False)


def in_processes(paths: list[str]) -> None:
    with ProcessPoolExecutor() as pool:
        list(pool.map(image_problem, paths, itertools.repeat(LIMIT), chunksize=64))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000, help="how many JPEGs to generate")
    parser.add_argument("--folder", type=Path, help="measure these images instead (recursively)")
    parser.add_argument("--cold", action="store_true", help="evict the files from the page cache before each pass")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the thread vs process pool comparison")
    args = parser.parse_args()
    prepare = evict if args.cold else warm

    def us_per_image(run: Callable[[list[str]], object]) -> float:
        prepare(paths)
        start = time.perf_counter()
        run(paths)
        return (time.perf_counter() - start) / len(paths) * 1e6

    with tempfile.TemporaryDirectory() as tmp:
        if args.folder:
            paths = sorted(str(p) for p in args.folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            paths = write_images(Path(tmp), args.images)
        # The pools run in turns, so a busy spell of the machine slows both; medians over the rounds.
        pooled = [(us_per_image(in_threads), us_per_image(in_processes)) for _ in range(args.rounds)]
        rows = [
            ("header only (Image.open)", us_per_image(one_by_one(header_only))),
            ("preflight check, one thread", us_per_image(one_by_one(lambda p: image_problem(p, LIMIT)))),
            ("preflight check, thread pool (as shipped)", statistics.median(t for t, _ in pooled)),
            ("preflight check, process pool", statistics.median(p for _, p in pooled)),
            ("decode at 1/8 scale (read_image, min_size)", us_per_image(one_by_one(lambda p: read_image(p, (1, 1))))),
            ("full decode (read_image)", us_per_image(one_by_one(read_image))),
        ]
    print(f"{len(paths)} images, {os.cpu_count()} CPUs, {'cold' if args.cold else 'warm'} page cache; thread vs "
          "process pool (us per image) by round: " + ", ".join(f"{t:.0f} vs {p:.0f}" for t, p in pooled))
    print("| what | us per image | images per second |\n|---|---|---|")
    for name, us in rows:
        print(f"| {name} | {us:.0f} | {1e6 / us:,.0f} |")


if __name__ == "__main__":
    main()
