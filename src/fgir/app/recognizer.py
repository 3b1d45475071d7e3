"""One uploaded picture in, what the demo page shows out: the top-5 classes with probabilities and
where the model looked (GLSim: the GLS similarity map and its crop; another ViT: the last block's
CLS attention). Knows nothing of Gradio, so it is testable and reusable on its own.

    recognizer = Recognizer.from_checkpoint("runs/dafre-glsim")
    answer = recognizer.answer("photo.jpg", "photo.jpg")
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch

from fgir.app.limits import open_upload
from fgir.config import DataConfig
from fgir.data import build_dataset
from fgir.data.synthetic import is_generated
from fgir.errors import FgirError
from fgir.methods.capabilities import Explains
from fgir.models.backbone import Backbone
from fgir.tools.attention import last_layer_map, model_attention
from fgir.tools.explain import heat_map
from fgir.tools.predictor import Predictor

TOP_K = 5
EXAMPLE_COUNT = 4


@dataclass(frozen=True)
class Answer:
    top: dict[str, float]  # class name -> probability, most probable first
    unknown: bool  # the top probability is under the predictor's `unknown_below`
    heat_map: np.ndarray | None  # (H, W, 3) uint8: the model's input with the map blended over it
    crop: np.ndarray | None  # (h, w, 3) uint8: the part of the input GLSim looked at twice


class Recognizer:
    """A predictor plus what the page needs around it: the explanation maps and example pictures."""

    def __init__(self, predictor: Predictor, data: DataConfig, examples: list[str] | None = None):
        self.predictor = predictor
        self.mean, self.std = (torch.tensor(v).view(3, 1, 1) for v in (data.mean, data.std))
        self.examples = examples or []

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "auto",
                        unknown_below: float | None = None, weights: str | os.PathLike | None = None) -> Recognizer:
        """Class names (and a calibrated temperature) come from the checkpoint; examples only if
        its dataset is on disk. Below `unknown_below`, the answer is "unknown". `weights`: the backbone
        weights of an adapter-only checkpoint (see `restore_model`)."""
        return cls.from_predictor(Predictor.from_checkpoint(path, device=device, unknown_below=unknown_below,
                                                            weights=weights))

    @classmethod
    def from_predictor(cls, predictor: Predictor) -> Recognizer:
        return cls(predictor, predictor.data, example_images(predictor.data))

    @property
    def explains(self) -> bool:
        """Whether the model offers its own explanation (GLSim: the GLS map and its crop)."""
        return isinstance(self.predictor.model, Explains)

    @property
    def map_title(self) -> str:
        """What the heat map shows: the model's own region scores, or its last-layer CLS attention."""
        if not self.explains:
            return "last-layer CLS attention"
        return getattr(self.predictor.model, "score_name", "GLS similarity to the global token")

    def answer(self, path: str | os.PathLike, name: str) -> Answer:
        """Classify the upload at `path`; `name` is how errors refer to it (raises UploadError)."""
        image = open_upload(path, name, self.predictor.data.max_image_pixels)
        (prediction,) = self.predictor.predict([image], topk=TOP_K)
        top = {score.class_name: score.probability for score in prediction.topk}
        batch = self.predictor.transform(image).unsqueeze(0)
        shown = (batch[0] * self.std + self.mean).clamp(0, 1).permute(1, 2, 0).numpy()
        picture, crop = self._where_it_looked(batch.to(self.predictor.device), shown)
        return Answer(top, prediction.unknown, picture, crop)

    def _where_it_looked(self, batch: torch.Tensor, shown: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        model, size = self.predictor.model, batch.shape[-2:]
        backbone = getattr(model, "backbone", None)
        details = None
        if isinstance(model, Explains):
            with torch.inference_mode():
                details = model.explain(batch)
        if details is not None and details.scores is not None:
            crop = None
            if details.boxes is not None:
                x0, y0, x1, y1 = (int(v) for v in details.boxes[0].tolist())
                crop = to_uint8(shown[y0:y1, x0:x1])
            return overlay(shown, heat_map(details.scores[0].reshape(backbone.grid_for(*size)), size)), crop
        if isinstance(backbone, Backbone):
            return overlay(shown, heat_map(last_layer_map(model_attention(model, backbone, batch))[0], size)), None
        return None, None  # e.g. a CNN baseline: no map to show


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """`heat` in [0, 1] coloured with jet (as in the explanation figures) and blended over `image`."""
    coloured = matplotlib.colormaps["jet"](heat)[..., :3]
    return to_uint8((1 - alpha) * image + alpha * coloured)


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)


def example_images(data: DataConfig, count: int = EXAMPLE_COUNT) -> list[str]:
    """Up to `count` test images (val if there is no test split), of different classes, when the
    dataset is on disk; none otherwise (a checkpoint serves without its dataset). Never writes: a
    synthetic set is read only when the one on disk has the checkpoint's parameters, since reading
    it from a missing or empty folder would generate it there."""
    if data.format == "synthetic" and not is_generated(data):
        return []
    for split in ("test", "val"):
        try:
            dataset = build_dataset(data, split, transform=None)
        except (FgirError, OSError, ValueError):
            continue
        first_of_class: dict[int, str] = {}
        for path, label in zip(dataset.paths, dataset.labels, strict=True):
            first_of_class.setdefault(label, path)
            if len(first_of_class) == count:
                break
        return [path for path in first_of_class.values() if Path(path).is_file()]
    return []
