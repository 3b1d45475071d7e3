"""Oxford-IIIT Pets: `images/<Breed>_<n>.jpg` with `annotations/{trainval,test}.txt` (lines
'<image name> <class id, 1-based> <species> <breed id>'). Class names come from the image names
('american_bulldog_10' -> 'american bulldog'); every class id must keep one name."""

from __future__ import annotations

from pathlib import Path

from fgir.data.prepare.common import text_lines
from fgir.data.prepare.splits import Layout, Row
from fgir.data.readers import DatasetFileError

EXPECTED = (37, 3680, 3669)
HINT = "Oxford-IIIT Pets (with images/ and annotations/)"


def _read_split(path: Path, names: dict[int, str]) -> list[Row]:
    """Rows of one split; records each class id's name in `names`, checking it agrees across lines."""
    rows = []
    for line_no, line in text_lines(path, HINT):
        parts = line.split()
        if len(parts) != 4 or not parts[1].isdigit() or int(parts[1]) < 1:
            raise DatasetFileError(f"{path}:{line_no}: expected '<image name> <class id> <species> <breed id>' "
                                   f"with a 1-based class id, got '{line}'")
        image, class_id = parts[0], int(parts[1])
        name = image.rsplit("_", 1)[0].replace("_", " ")
        if names.setdefault(class_id, name) != name:
            raise DatasetFileError(f"{path}:{line_no}: image {image} has class {class_id}, "
                                   f"which other lines give to '{names[class_id]}'")
        rows.append((f"{image}.jpg", class_id - 1))
    return rows


def read_layout(root: Path) -> Layout:
    names: dict[int, str] = {}
    train_val = _read_split(root / "annotations" / "trainval.txt", names)
    test = _read_split(root / "annotations" / "test.txt", names)
    missing = sorted(set(range(1, max(names, default=0) + 1)) - set(names))
    if missing:
        raise DatasetFileError(f"{root / 'annotations'}: no image of class id {', '.join(map(str, missing))} in "
                               "trainval.txt or test.txt, so its name is unknown")
    return Layout(name="pets", root=root, image_dir="images", class_names=[names[i] for i in sorted(names)],
                  train_val=train_val, test=test, expected=EXPECTED)
