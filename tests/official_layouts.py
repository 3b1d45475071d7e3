"""Miniature datasets in their official download layouts (what `fgir data prepare` reads), with the
official class count and a few small images per class."""

from __future__ import annotations

from pathlib import Path

from PIL import Image


def _image(path: Path, class_index: int, image_index: int) -> None:
    """A small JPEG whose colour tells the class apart (so a run has something to learn)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = ((class_index * 37) % 256, (class_index * 91) % 256, (image_index * 40) % 256)
    Image.new("RGB", (40, 32), colour).save(path)


def make_cub(root: Path, num_classes: int = 200, train_per_class: int = 3, test_per_class: int = 1) -> None:
    """CUB_200_2011 as unpacked from CUB_200_2011.tgz: images/<NNN.Name>/<Name>_<n>.jpg and the id
    tables images.txt, image_class_labels.txt (1-based classes), train_test_split.txt, classes.txt."""
    images, labels, split, classes = [], [], [], []
    image_id = 0
    for class_id in range(1, num_classes + 1):
        name = f"Bird_{class_id:03d}"
        folder = f"{class_id:03d}.{name}"
        classes.append(f"{class_id} {folder}")
        for n in range(train_per_class + test_per_class):
            image_id += 1
            relative = f"{folder}/{name}_{n:04d}_{image_id}.jpg"
            _image(root / "images" / relative, class_id, n)
            images.append(f"{image_id} {relative}")
            labels.append(f"{image_id} {class_id}")
            split.append(f"{image_id} {int(n < train_per_class)}")
    for file, lines in (("images.txt", images), ("image_class_labels.txt", labels),
                        ("train_test_split.txt", split), ("classes.txt", classes)):
        (root / file).write_text("\n".join(lines) + "\n")


def make_cotton(root: Path, num_classes: int = 80, train_per_class: int = 3, test_per_class: int = 1) -> None:
    """Cotton80 (Ultra-FGVC) as released: images/<class>_<n>_<train|test>.jpg, classes numbered from 1."""
    for label in range(1, num_classes + 1):
        for n in range(train_per_class + test_per_class):
            split = "train" if n < train_per_class else "test"
            _image(root / "images" / f"{label}_{n}_{split}.jpg", label, n)
