"""DAF:re (Rios et al., arXiv:2101.08674): `labels/{train,val,test}.csv`, headerless `class_id,relative_path` rows
(`0,0933/194933.jpg`: 4-digit bucket folders), `labels/classid_classname.csv` (headerless
`class_id,danbooru_tag`), and one image folder per variant: `faces/` (head crops, dataset name
`dafre_faces`) or `fullMin256/` (full images, `dafb` as in the GLSim paper). Both variants share the
labels, so they are two preparers over one download.

The official train/val/test split is kept (train_val = train + val). Class names become display
names ("Edelgard von Hresvelgr (Fire Emblem)"), with the character, the series and the raw tag in
columns of their own.
"""

from __future__ import annotations

from pathlib import Path

from fgir.data.class_names import parse_tag
from fgir.data.prepare.common import require_file
from fgir.data.prepare.splits import Layout, Row
from fgir.data.readers import DatasetFileError, read_class_names, read_label_file, read_split_csv

EXPECTED = (3263, 322947 + 46050, 94440)
EXPECTED_VAL = 46050
HINT = "DAF:re"
# Anime images are normalised with mean/std 0.5 in both the Animesion and the GLSim recipes.
ANIME_NORMALISATION = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


def read_labels(path: Path, num_classes: int) -> list[Row]:
    """A label file as distributed (headerless), or with the GLSim repo's `class_id,dir` header."""
    with open(require_file(path, HINT), encoding="utf-8-sig") as handle:
        has_header = handle.readline().strip().startswith("class_id")
    rows = (read_split_csv if has_header else read_label_file)(path, num_classes)
    return list(zip(rows.paths, rows.labels, strict=True))


class Variant:
    """One image variant of DAF:re: the dataset name and the folder its images are in."""

    def __init__(self, name: str, image_dir: str):
        self.name = name
        self.image_dir = image_dir

    def read_layout(self, root: Path) -> Layout:
        labels = root / "labels"
        if not (root / self.image_dir).is_dir():
            raise DatasetFileError(f"{root / self.image_dir}: image folder not found (the {self.name} variant "
                                   f"keeps its images in {self.image_dir}/ beside labels/)")
        tags = read_class_names(require_file(labels / "classid_classname.csv", HINT))
        names = [parse_tag(tag) for tag in tags]
        train, val, test = (read_labels(labels / f"{split}.csv", len(names)) for split in ("train", "val", "test"))
        return Layout(
            name=self.name, root=root, image_dir=self.image_dir, class_names=[n.display for n in names],
            train_val=train + val, test=test, expected=EXPECTED, val=val, expected_val=EXPECTED_VAL,
            class_columns={"character": [n.character for n in names], "series": [n.series for n in names], "tag": tags},
            data_config=ANIME_NORMALISATION, config_file=f"{self.name}.yaml",
        )


FACES = Variant("dafre_faces", "faces")
FULL = Variant("dafb", "fullMin256")
