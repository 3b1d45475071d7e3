"""`preflight`: a cheap look at every image a run will read, before any work (`data.preflight`).

An unreadable image otherwise stops a run only when a batch first holds it: in epoch 2 when it fell
in epoch 1's drop_last remainder, or at the very end when it is a test image. Here each listed file
is opened once, in a thread pool: Pillow parses its header (format and size, no pixels), the
`data.max_image_pixels` limit is applied, and a JPEG (MPO included) or PNG must end with its end
marker (EOI, IEND). A file that fails any of these is decoded by `read_image` (a JPEG at 1/8
scale), so a truncated file is told from one with data after its picture (motion photos) and
reported with the loader's own message.

What this does not catch, the loader still reports under `data.on_error`: damage inside a file
whose end is intact (a corrupt scan segment), and a WEBP, GIF, BMP or TIFF cut short after its
header. `fgir data check` decodes every image and finds those too.

The same pass warns when splits share images (see `fgir data check` for the rows).
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from PIL import Image
from tqdm import tqdm

from fgir.config import DataConfig
from fgir.data.check import leakage_harm
from fgir.data.datasets import SPLITS, ImageListDataset, build_dataset
from fgir.data.images import ImageReadError, read_image, too_many_pixels
from fgir.errors import FgirError

# data.preflight=auto opens the images when the splits list fewer than this many (the cost per image is
# measured in docs/benchmarks.md).
AUTO_LIMIT = 150_000
END_MARKERS = {"JPEG": b"\xff\xd9", "MPO": b"\xff\xd9", "PNG": b"\x00\x00\x00\x00IEND\xaeB`\x82"}
SHOWN = 5  # bad images named in the error; the rest are counted


class PreflightError(ImageReadError, FgirError):
    """Listed images that cannot be read, found before any work (data.on_error=fail)."""


@dataclass
class Preflight:
    checked: int = 0  # images opened; 0 when data.preflight did not ask for it
    problems: list[str] = field(default_factory=list)  # one message per unreadable image, naming it
    warnings: list[str] = field(default_factory=list)  # splits that share images


def preflight(data: DataConfig, splits: Iterable[str] = SPLITS, *, progress: bool = True,
              echo: bool = True) -> Preflight:
    """Check the images of the configured `splits` of `data` as `data.preflight` asks.

    Under data.on_error=fail unreadable images raise one PreflightError naming the first few;
    under skip their count is printed (the loader leaves them out). `echo=False` prints nothing
    (the other processes of a distributed run)."""
    datasets = {split: build_dataset(data, split, None) for split in splits if getattr(data, split) is not None}
    result = Preflight(warnings=shared_image_warnings(datasets))
    for message in result.warnings if echo else ():
        print(f"warning: {message}", file=sys.stderr)
    images = list(dict.fromkeys(path for dataset in datasets.values() for path in dataset.paths))
    if data.preflight == "on" or (data.preflight == "auto" and len(images) < AUTO_LIMIT):
        result.checked = len(images)
        result.problems = image_problems(images, data.max_image_pixels, progress)
    if result.problems and data.on_error == "fail":
        found = f"found by data.preflight={data.preflight} before starting; data.on_error=skip leaves such images out"
        raise PreflightError(_listing(result.problems, len(images), found))
    if result.problems and echo:
        print(f"warning: {_listing(result.problems, len(images), 'data.on_error=skip leaves them out')}",
              file=sys.stderr)
    return result


def _listing(problems: list[str], total: int, note: str) -> str:
    """One line for one problem; otherwise a count and the first SHOWN, one per line."""
    if len(problems) == 1:
        return f"{problems[0]} ({note})"
    more = f"\n  ... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
    return f"{len(problems)} of {total} listed images cannot be read ({note}):\n  " + "\n  ".join(problems[:SHOWN]) + more


def shared_image_warnings(datasets: dict[str, ImageListDataset]) -> list[str]:
    """One warning per pair of splits listing the same image files."""
    images = {split: {os.path.normpath(path) for path in dataset.paths} for split, dataset in datasets.items()}
    warnings = []
    for first, second in itertools.combinations(images, 2):
        shared = images[first] & images[second]
        if not shared:
            continue
        what = ("list the same images" if images[first] == images[second]
                else f"share {len(shared)} images (e.g. {min(shared)})")
        warnings.append(f"data.{first} and data.{second} {what}: {leakage_harm(first, second)} "
                        "(`fgir data check` lists them)")
    return warnings


def image_problems(paths: list[str], max_pixels: int, progress: bool = True) -> list[str]:
    """The problem of each unreadable image among `paths`, in their order."""
    with ThreadPoolExecutor() as pool:  # threads: most of the time is file system waits
        results = pool.map(image_problem, paths, itertools.repeat(max_pixels))
        found = list(tqdm(results, total=len(paths), desc="preflight", unit="img", disable=not progress))
    return [problem for problem in found if problem is not None]


def image_problem(path: str, max_pixels: int) -> str | None:
    """None when `path` looks whole; otherwise it is decoded, and the loader's message kept."""
    if _looks_whole(path, max_pixels):
        return None
    try:
        read_image(path, min_size=(1, 1), max_pixels=max_pixels)  # min_size: a JPEG at 1/8 scale
    except ImageReadError as err:
        return str(err)
    return None


def _looks_whole(path: str, max_pixels: int) -> bool:
    """The header parses, the size is within the limit and a JPEG or PNG ends with its end marker."""
    try:
        with open(path, "rb") as handle, Image.open(handle) as image:
            if too_many_pixels(image.size, max_pixels):
                return False
            marker = END_MARKERS.get(image.format or "")
            if marker is None:
                return True
            handle.seek(-len(marker), os.SEEK_END)
            return handle.read() == marker
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return False
