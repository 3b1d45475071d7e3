"""The Ultra-FGVC benchmark (Yu et al., ICCV 2021; used by ILA, arXiv:2409.11051): ten datasets in two layouts.

- Named images (Cotton80, SoyLocal, SoyGlobal): `<root>/images/<class>_<n>_<split>.<ext>` (or the
  images directly in `<root>`), split `train` or `test`; the class is the file name's first part.
- Annotation files (SoyGene, each SoyAgeing subset R1, R3-R6): `<root>/images/...` with
  `<root>/anno/{train,test}.txt`, one `<image path relative to images/> <class label>` per line (the
  format the benchmark's loaders read with a space separator). Labels are integers (1-based in the
  release); they are remapped in numeric order to 0..C-1 over both splits, so 0-based files work too.
- SoyAgeing: the five subsets together, `<root>/R<k>/images/...` + `<root>/R<k>/anno/...`; the
  subsets share their 198 classes (the same cultivars at different ageing stages).

Class names are the labels as the release writes them (numbers): it names no cultivar.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from fgir.data.prepare.common import text_lines
from fgir.data.prepare.splits import Layout
from fgir.data.readers import DatasetFileError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
SOYAGEING_SUBSETS = ("R1", "R3", "R4", "R5", "R6")


def _class_order(labels: set[str]) -> list[str]:
    """Numeric order when every label is a number (so '10' follows '9'), text order otherwise."""
    return sorted(labels, key=lambda label: (0, int(label), "") if label.isdigit() else (1, 0, label))


@dataclass(frozen=True)
class NamedImages:
    """A dataset whose split and class are written in each image's name."""

    name: str
    expected: tuple[int, int, int]
    hint: str

    def read_layout(self, root: Path) -> Layout:
        image_dir = "images" if (root / "images").is_dir() else "."
        labelled: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
        for path in sorted((root / image_dir).iterdir()):
            if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue  # the archive's readme and the like
            parts = path.stem.rsplit("_", 2)
            if len(parts) != 3 or not parts[0] or not parts[1].isdigit() or parts[2].lower() not in labelled:
                raise DatasetFileError(f"{path}: expected an image named '<class>_<n>_<train|test>{path.suffix}' "
                                       f"(is this the {self.hint} folder?)")
            labelled[parts[2].lower()].append((path.name, parts[0]))
        if not labelled["train"] and not labelled["test"]:
            raise DatasetFileError(f"{root / image_dir}: no images (is this the {self.hint} folder?)")
        classes = _class_order({label for rows in labelled.values() for _, label in rows})
        index = {label: i for i, label in enumerate(classes)}
        train_val, test = ([(file, index[label]) for file, label in labelled[split]] for split in ("train", "test"))
        return Layout(name=self.name, root=root, image_dir=image_dir, class_names=classes,
                      train_val=train_val, test=test, expected=self.expected)


def _read_anno(path: Path, hint: str, prefix: str = "") -> list[tuple[str, str]]:
    """(`prefix` + image path, label) for each line of an anno file."""
    rows = []
    for line_no, line in text_lines(path, hint):
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].isdigit():
            raise DatasetFileError(f"{path}:{line_no}: expected '<image path> <class label>' with an integer "
                                   f"label, got '{line}'")
        rows.append((prefix + parts[0], str(int(parts[1]))))
    return rows


def _anno_layout(name: str, root: Path, image_dir: str, splits: dict[str, list[tuple[str, str]]],
                 expected: tuple[int, int, int]) -> Layout:
    classes = _class_order({label for rows in splits.values() for _, label in rows})
    index = {label: i for i, label in enumerate(classes)}
    train_val, test = ([(image, index[label]) for image, label in splits[split]] for split in ("train", "test"))
    return Layout(name=name, root=root, image_dir=image_dir, class_names=classes,
                  train_val=train_val, test=test, expected=expected)


@dataclass(frozen=True)
class AnnotatedImages:
    """`<root>/images/` with `<root>/anno/{train,test}.txt`: SoyGene, or one SoyAgeing subset (then
    `subset` is its folder name and a folder of another subset is refused)."""

    name: str
    expected: tuple[int, int, int]
    hint: str
    subset: str | None = None

    def read_layout(self, root: Path) -> Layout:
        if self.subset and re.fullmatch(r"R\d", root.name) and root.name != self.subset:
            raise DatasetFileError(f"{root}: this is SoyAgeing subset {root.name}, not {self.subset} "
                                   f"(prepare it as soyageing_{root.name.lower()})")
        if self.subset and not (root / "anno").is_dir() and (root / self.subset / "anno").is_dir():
            raise DatasetFileError(f"{root}: this is the SoyAgeing folder; prepare subset {self.subset} from "
                                   f"{root / self.subset}")
        splits = {split: _read_anno(root / "anno" / f"{split}.txt", self.hint) for split in ("train", "test")}
        return _anno_layout(self.name, root, "images", splits, self.expected)


@dataclass(frozen=True)
class SoyAgeing:
    """All five SoyAgeing subsets as one dataset: `<root>/R<k>/{images,anno}` for R1, R3-R6; image
    paths are written relative to `<root>` (`R1/images/...`)."""

    name: str = "soyageing"
    expected: tuple[int, int, int] = (198, 4950, 4950)

    def read_layout(self, root: Path) -> Layout:
        missing = [subset for subset in SOYAGEING_SUBSETS if not (root / subset / "anno").is_dir()]
        if missing:
            raise DatasetFileError(f"{root}: no {', '.join(f'{s}/anno' for s in missing)} folder (expected the "
                                   f"SoyAgeing folder holding {', '.join(SOYAGEING_SUBSETS)})")
        splits: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
        for subset in SOYAGEING_SUBSETS:
            for split in splits:
                splits[split] += _read_anno(root / subset / "anno" / f"{split}.txt", "SoyAgeing",
                                            prefix=f"{subset}/images/")
        return _anno_layout(self.name, root, ".", splits, self.expected)


def _subset(k: str) -> AnnotatedImages:
    return AnnotatedImages(f"soyageing_{k.lower()}", (198, 990, 990), f"SoyAgeing {k}", subset=k)


PREPARERS = {
    "cotton": NamedImages("cotton", (80, 240, 240), "Cotton80"),
    "soylocal": NamedImages("soylocal", (200, 600, 600), "SoyLocal"),
    "soyglobal": NamedImages("soyglobal", (1938, 5814, 5814), "SoyGlobal"),
    "soygene": AnnotatedImages("soygene", (1110, 12763, 11143), "SoyGene"),
    "soyageing": SoyAgeing(),
    **{f"soyageing_{k.lower()}": _subset(k) for k in SOYAGEING_SUBSETS},
}
