"""Top-k predictions for images, folders or in-memory PIL images from a checkpoint alone.

    predictor = Predictor.from_checkpoint("runs/cub-vit")  # or fgir.load(...)
    for prediction in predictor.predict("photos/", topk=3):
        print(prediction.image, prediction.topk[0].class_name)

Probabilities are softmax(logits / T) with the temperature T stored in the checkpoint by
`fgir calibrate` (1 when it was never calibrated). With `unknown_below`, an image whose most
probable class is less likely than that is marked unknown (its top-k list is kept). With
`on_error="skip"`, a file that cannot be read comes back with its `error` and the others are predicted.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from fgir.config import DataConfig
from fgir.data import ImageReadError, build_transform, read_image
from fgir.data.readers import IMAGE_EXTENSIONS
from fgir.engine.acceleration import compile_model
from fgir.engine.checkpoint import restore_model
from fgir.engine.device import autocast, resolve_device, resolve_precision
from fgir.errors import FgirError
from fgir.tools.calibration import stored_temperature

ImageInput = Image.Image | str | os.PathLike
UNKNOWN_LABEL = "unknown (top class below the threshold)"


class PredictorError(FgirError, ValueError):
    """A prediction setting that cannot be used (top-k, batch size, temperature, unknown threshold)."""


@dataclass(frozen=True)
class ClassScore:
    class_id: int
    class_name: str
    probability: float


@dataclass(frozen=True)
class Prediction:
    image: str  # the file path, or "<image i>" for the i-th in-memory image of the call
    topk: list[ClassScore]  # most probable first; empty when the image could not be read
    unknown: bool = False  # the top probability is under the predictor's `unknown_below`
    error: str | None = None  # why the image could not be read (predict with on_error="skip")

    def to_dict(self) -> dict:
        return asdict(self)


class Predictor:
    """A model with its class names and test transform, ready to classify images."""

    def __init__(self, model: nn.Module, class_names: list[str], data: DataConfig, device: torch.device,
                 dtype: torch.dtype | None = None, batch_size: int = 32, temperature: float = 1.0,
                 unknown_below: float | None = None):
        if not (math.isfinite(temperature) and temperature > 0):
            raise PredictorError(f"temperature must be a positive number, got {temperature}")
        if unknown_below is not None and not 0 <= unknown_below <= 1:
            raise PredictorError(f"unknown_below is a probability in [0, 1], got {unknown_below}")
        if batch_size < 1:
            raise PredictorError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.class_names = list(class_names)
        self.data = data  # the checkpoint's data section: image size, normalisation, dataset location
        self.transform: Callable[[Image.Image], torch.Tensor] = build_transform(data, train=False)
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.temperature = temperature
        self.unknown_below = unknown_below

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "auto", precision: str = "auto",
                        batch_size: int = 32, temperature: float | None = None,
                        unknown_below: float | None = None, compile: bool = False,
                        weights: str | os.PathLike | None = None) -> Predictor:
        """Load a checkpoint file or run directory; the dataset need not exist. `temperature` None
        takes the checkpoint's calibrated one (1 if it has none); 1.0 gives the raw softmax.
        `compile`: torch.compile with frozen weights (pays off over many batches). `weights`: the
        backbone weights of an adapter-only checkpoint (see `restore_model`)."""
        torch_device = resolve_device(device)
        model, checkpoint = restore_model(path, torch_device, weights=weights)
        if compile:
            compile_model(model, frozen_weights=True)
        if temperature is None:
            temperature = stored_temperature(checkpoint.path)
        return cls(model, checkpoint.class_names, checkpoint.config.data, torch_device,
                   resolve_precision(precision, torch_device), batch_size, temperature, unknown_below)

    def predict(self, images: ImageInput | Iterable[ImageInput], topk: int = 5,
                on_error: str = "fail") -> list[Prediction]:
        """Top-k classes of each image, in input order; a folder stands for its image files (recursively,
        sorted). An image file that cannot be read raises ImageReadError (on_error="fail") or comes
        back as a Prediction with that error and no classes (on_error="skip")."""
        if topk < 1:
            raise PredictorError(f"topk must be >= 1, got {topk}")
        if on_error not in ("fail", "skip"):
            raise PredictorError(f"on_error must be 'fail' or 'skip', got '{on_error}'")
        k = min(topk, len(self.class_names))
        sources = list(expand_inputs(images))
        predictions: list[Prediction] = [None] * len(sources)  # type: ignore[list-item]  # all filled below
        for start in range(0, len(sources), self.batch_size):
            readable: list[tuple[int, torch.Tensor]] = []
            for position in range(start, min(start + self.batch_size, len(sources))):
                name, item = sources[position]
                try:
                    readable.append((position, self.transform(open_image(item, self.data.max_image_pixels))))
                except ImageReadError as err:
                    if on_error == "fail":
                        raise
                    predictions[position] = Prediction(name, [], error=str(err))
            if not readable:
                continue
            positions, tensors = zip(*readable, strict=True)
            top = self.probabilities(torch.stack(tensors)).topk(k, dim=1)
            for position, values, indices in zip(positions, top.values.tolist(), top.indices.tolist(), strict=True):
                scores = [ClassScore(i, self.class_names[i], p) for i, p in zip(indices, values, strict=True)]
                unknown = self.unknown_below is not None and values[0] < self.unknown_below
                predictions[position] = Prediction(sources[position][0], scores, unknown)
        return predictions

    @torch.inference_mode()
    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Softmax over classes of logits / temperature of a batch of already transformed images, on
        the CPU."""
        with autocast(self.device, self.dtype):
            logits = self.model(batch.to(self.device))
        return (logits.float() / self.temperature).softmax(dim=1).cpu()


def expand_inputs(images: ImageInput | Iterable[ImageInput]) -> Iterator[tuple[str, ImageInput]]:
    """(display name, image or file path) pairs; folders are replaced by their image files."""
    if isinstance(images, Image.Image | str | os.PathLike):
        images = [images]
    for index, item in enumerate(images):
        if isinstance(item, Image.Image):
            yield f"<image {index}>", item
        elif Path(item).is_dir():
            files = image_files(Path(item))
            if not files:
                raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in folder {item}")
            yield from ((str(file), file) for file in files)
        else:
            yield str(item), Path(item)


def image_files(folder: Path) -> list[Path]:
    """Image files under `folder`, recursively, sorted; hidden files skipped (e.g. macOS `._x.jpg`).
    A link that leads nowhere (broken, or a loop) is kept, so that it is reported, not passed over."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
                  and (p.is_file() or (p.is_symlink() and not p.is_dir())))


def open_image(item: ImageInput, max_pixels: int = DataConfig.max_image_pixels) -> Image.Image:
    # Files go through read_image: orientation, 16-bit and alpha handled; errors name the file.
    return item.convert("RGB") if isinstance(item, Image.Image) else read_image(item, max_pixels=max_pixels)


def format_predictions(predictions: list[Prediction], as_json: bool = False) -> str:
    """JSON (a list of {image, topk: [{class_id, class_name, probability}], unknown, error}) or an
    aligned table, where an unknown image gets a first row "- unknown" above its ranked classes and an
    image that could not be read has no row."""
    if as_json:
        return json.dumps([p.to_dict() for p in predictions], indent=1)
    header = ("image", "rank", "class", "probability")
    rows = []
    for p in predictions:
        ranked = [(str(rank), score.class_name, f"{100 * score.probability:.2f}%")
                  for rank, score in enumerate(p.topk, start=1)]
        if p.unknown:
            ranked.insert(0, ("-", UNKNOWN_LABEL, ""))
        rows += [(p.image if index == 0 else "", *row) for index, row in enumerate(ranked)]
    widths = [max(len(row[col]) for row in [header, *rows]) for col in range(len(header))]
    lines = [
        f"{image:<{widths[0]}}  {rank:>{widths[1]}}  {name:<{widths[2]}}  {prob:>{widths[3]}}".rstrip()
        for image, rank, name, prob in [header, *rows]
    ]
    return "\n".join(lines)
