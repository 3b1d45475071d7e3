"""Datasets, image reading, augmentation presets, seeded sampling and the built-in synthetic set."""

from fgir.data.datasets import ImageListDataset, build_dataset, dataset_info
from fgir.data.images import ImageReadError, read_image
from fgir.data.readers import (
    DatasetFileError,
    SplitRows,
    read_class_names,
    read_label_file,
    read_split_csv,
    scan_class_folders,
)
from fgir.data.sampler import EpochSampler, build_loader
from fgir.data.synthetic import ensure_synthetic
from fgir.data.transforms import build_batch_mix, build_transform

__all__ = [
    "DatasetFileError",
    "EpochSampler",
    "ImageListDataset",
    "ImageReadError",
    "SplitRows",
    "build_batch_mix",
    "build_dataset",
    "build_loader",
    "build_transform",
    "dataset_info",
    "ensure_synthetic",
    "read_class_names",
    "read_image",
    "read_label_file",
    "read_split_csv",
    "scan_class_folders",
]
