"""moeImouto (nagadomi's animeface-character-dataset; Animesion, arXiv:2101.08674): `data/<NNN_name>/face_*.png`,
one folder per character, no official split.

Test: a deterministic 20% of each class, the proportion of the Animesion reference's per-class 80/20
train/test split (its lists live in that code repository, not in the dataset download); val: the
usual per-class 20% of the rest, so the test images are never used to choose hyper-parameters. Display names come from the folders ('000_hatsune_miku' -> 'Hatsune
Miku'); the folder name is kept in a column of its own.
"""

from __future__ import annotations

from pathlib import Path

from fgir.data.class_names import folder_display_name
from fgir.data.prepare.dafre import ANIME_NORMALISATION
from fgir.data.prepare.splits import Layout
from fgir.data.readers import scan_class_folders

EXPECTED = (173, 14395, 0)  # classes, images, official test images (none)
TEST_FRACTION = 0.2


def read_layout(root: Path) -> Layout:
    rows, folders = scan_class_folders(root / "data")
    return Layout(
        name="moeimouto", root=root, image_dir="data", class_names=[folder_display_name(f) for f in folders],
        train_val=list(zip(rows.paths, rows.labels, strict=True)), test=[], expected=EXPECTED,
        held_out_test=TEST_FRACTION, class_columns={"folder": folders}, data_config=ANIME_NORMALISATION,
    )
