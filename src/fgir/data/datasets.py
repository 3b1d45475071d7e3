"""The dataset object and `build_dataset`: a DataConfig and a split name in, labelled images out."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from fgir.config import ConfigError, DataConfig
from fgir.data.hf_datasets import ensure_hf
from fgir.data.images import ImageReadError, read_image
from fgir.data.readers import (
    SplitRows,
    class_folders,
    read_class_names,
    read_label_file,
    read_split_csv,
    scan_class_folders,
)
from fgir.data.synthetic import ensure_synthetic
from fgir.data.transforms import resize_size

SPLITS = ("train", "val", "test")


class ImageListDataset(Dataset):
    """Images given by absolute path with 0-based labels; reading happens in `__getitem__`.

    A key is an index or `(index, sample_seed)`. With a seed, the transform runs under a private
    random state seeded by it, so the augmentation of a sample is a pure function of
    (sample_seed, image): independent of worker count, worker assignment and what ran before.

    on_error="skip": an image that cannot be read comes back as an `UnreadableImage` instead of
    raising; `collate_readable` then leaves it out of the batch and passes its message along.
    """

    def __init__(
        self,
        paths: list[str],
        labels: list[int],
        class_names: list[str],
        transform: Callable[[Any], Any] | None = None,
        boxes: np.ndarray | torch.Tensor | None = None,
        on_error: str = "fail",
        decode_size: int | None = None,
        max_pixels: int = DataConfig.max_image_pixels,
    ) -> None:
        if len(paths) != len(labels):
            raise ValueError(f"got {len(paths)} paths but {len(labels)} labels")
        if boxes is not None and tuple(boxes.shape) != (len(paths), 4):
            raise ValueError(f"boxes must have shape ({len(paths)}, 4), got {tuple(boxes.shape)}")
        self.paths = paths
        self.labels = labels
        self.class_names = class_names
        self.transform = transform
        self.boxes = None if boxes is None else torch.as_tensor(boxes, dtype=torch.float32)
        if on_error not in ("fail", "skip"):
            raise ValueError(f"on_error must be 'fail' or 'skip', got '{on_error}'")
        self.on_error = on_error
        # JPEGs are decoded at the smallest reduced scale still >= decode_size x decode_size.
        self.min_size = None if decode_size is None else (decode_size, decode_size)
        self.max_pixels = max_pixels

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, int] | UnreadableImage:
        index, sample_seed = key if isinstance(key, tuple) else (key, None)
        try:
            image = read_image(self.paths[index], min_size=self.min_size, max_pixels=self.max_pixels)
        except ImageReadError as err:
            if self.on_error == "fail":
                raise
            return UnreadableImage(self.paths[index], str(err))
        label = self.labels[index]
        if self.transform is None:
            return image, label
        if sample_seed is None:
            return self.transform(image), label
        return _seeded_call(self.transform, image, sample_seed), label


@dataclass(frozen=True)
class UnreadableImage:
    """Stands in for a sample whose image could not be read (on_error="skip")."""

    path: str
    message: str


@dataclass
class Batch:
    """What a loader over a skipping dataset yields: the readable samples, and which were left out."""

    images: torch.Tensor
    labels: torch.Tensor
    kept: torch.Tensor  # (len(samples),) bool: the batch's samples that are in `images`, in order
    skipped: list[UnreadableImage]


def collate_readable(samples: list[tuple[Any, int] | UnreadableImage]) -> Batch:
    """Collate the readable samples; an all-unreadable batch gives empty tensors."""
    good = [s for s in samples if not isinstance(s, UnreadableImage)]
    images, labels = default_collate(good) if good else (torch.empty(0), torch.empty(0, dtype=torch.long))
    kept = torch.tensor([not isinstance(s, UnreadableImage) for s in samples])
    return Batch(images, labels, kept, [s for s in samples if isinstance(s, UnreadableImage)])


def _seeded_call(function: Callable[[Any], Any], argument: Any, seed: int) -> Any:
    """`function(argument)` with torch's CPU, Python's and NumPy's global random state (timm's
    policies draw from the last two) seeded by `seed`; the states are restored afterwards, so the
    caller's random streams are untouched."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # not torch.manual_seed: that reseeds CUDA too
        random.seed(seed)
        seed %= 2**64
        np.random.seed([seed & 0xFFFFFFFF, seed >> 32])  # its integer seed takes 32 bits only
        try:
            return function(argument)
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def readable_form(data: DataConfig) -> DataConfig:
    """The config that reads `data` from files: a synthetic set is generated and a Hugging Face
    dataset exported first (each only once), then both are read as CSV datasets."""
    if data.format == "synthetic":
        return ensure_synthetic(data)
    if data.format == "hf":
        return ensure_hf(data)
    return data


def dataset_info(data: DataConfig) -> tuple[int, list[str]]:
    """(num_classes, class_names) from the configuration alone, without reading any split file.

    Sources: `data.class_names` (a CSV under `data.root`), then for the folder format the class
    folders of the train split, then `data.num_classes` (names "0".."C-1"). When two are given they
    must agree. The class count never comes from the labels of one split: a split may miss classes.
    """
    data = readable_form(data)
    root = Path(data.root)
    if data.class_names is not None:
        names_file = root / data.class_names
        if not names_file.is_file():
            raise ConfigError(f"data.class_names: file not found: {names_file}")
        names = read_class_names(names_file)
        source = f"data.class_names ({names_file})"
    elif data.format == "folder":
        names = class_folders(root / data.train)
        source = f"the class folders of data.train ({root / data.train})"
    elif data.num_classes is not None:
        if data.num_classes < 1:
            raise ConfigError(f"data.num_classes must be >= 1, got {data.num_classes}")
        return data.num_classes, [str(i) for i in range(data.num_classes)]
    else:
        raise ConfigError(
            f"the number of classes of dataset '{data.name}' is unknown: set data.num_classes "
            "or data.class_names (a class_id,class_name CSV under data.root)"
        )
    if data.num_classes is not None and data.num_classes != len(names):
        raise ConfigError(f"data.num_classes is {data.num_classes} but {source} lists {len(names)} classes")
    return len(names), names


def build_dataset(data: DataConfig, split: str, transform: Callable[[Any], Any] | None) -> ImageListDataset:
    """The `split` ('train', 'val' or 'test') of the dataset described by `data`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got '{split}'")
    data = readable_form(data)
    split_name = getattr(data, split)
    if split_name is None:
        raise ConfigError(f"data.{split} is not set: dataset '{data.name}' has no {split} split configured")
    num_classes, names = dataset_info(data)
    root = Path(data.root)
    location = root / split_name
    if not location.exists():
        raise ConfigError(f"data.{split}: split file or folder not found: {location}")
    rows = _read_split(data, location, num_classes, names)
    base = os.path.abspath(image_root(data, split_name))
    paths = [os.path.join(base, relative) for relative in rows.paths]
    # Train and test transforms start with a square resize no larger than resize_size(data).
    decode_size = resize_size(data) if data.fast_decode else None
    return ImageListDataset(paths, rows.labels, names, transform, rows.boxes, on_error=data.on_error,
                            decode_size=decode_size, max_pixels=data.max_image_pixels)


def image_root(data: DataConfig, split_name: str) -> Path:
    """The folder a split's image paths are relative to: `data.root/data.image_dir`, or for the
    folder format the split's own folder."""
    if data.format == "folder":
        return Path(data.root) / split_name
    return Path(data.root) / data.image_dir


def _read_split(data: DataConfig, location: Path, num_classes: int, names: list[str]) -> SplitRows:
    if data.format == "csv":
        return read_split_csv(location, num_classes)
    if data.format == "labels":
        return read_label_file(location, num_classes)
    if data.format == "folder":
        return scan_class_folders(location, names)[0]
    raise ConfigError(f"data.format must be one of csv, labels, folder, synthetic; got '{data.format}'")
