"""`fgir data prepare <name> <downloaded root>`: official dataset layouts -> the split CSVs.

Each dataset module turns its native layout into (relative path, class id) rows for the official
train_val and test splits plus class names; `splits.write_prepared` does the rest (deterministic
per-class 80/20 train/val split, count checks, CSVs and a dataset YAML, written atomically).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from fgir.config import ConfigError
from fgir.data.prepare import (
    aircraft,
    cars,
    cub,
    dafre,
    dogs,
    flowers,
    food,
    inat17,
    moeimouto,
    nabirds,
    pets,
    vegfru,
)
from fgir.data.prepare.splits import PreparedDataset, write_prepared
from fgir.data.prepare.ultra import PREPARERS as ULTRA_FGVC

PREPARERS = {
    "cub": cub,
    "nabirds": nabirds,
    "dogs": dogs,
    "cars": cars,
    "aircraft": aircraft,
    "pets": pets,
    "flowers": flowers,
    "food": food,
    "inat17": inat17,
    "vegfru": vegfru,
    "dafre_faces": dafre.FACES,
    "dafb": dafre.FULL,
    "moeimouto": moeimouto,
    **ULTRA_FGVC,  # cotton, soylocal, soyglobal, soygene, soyageing, soyageing_r1 ... _r6
}


def prepare_dataset(name: str, root: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                    check_counts: bool = True) -> PreparedDataset:
    if name not in PREPARERS:
        close = difflib.get_close_matches(name, list(PREPARERS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"no preparer for dataset '{name}' (known: {', '.join(PREPARERS)}){hint}")
    module = PREPARERS[name]
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"dataset root not found: {root}")
    layout = module.read_layout(root)
    return write_prepared(layout, Path(out_dir) if out_dir else root, check_counts=check_counts)


__all__ = ["PREPARERS", "PreparedDataset", "prepare_dataset"]
