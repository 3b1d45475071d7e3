"""`fgir export onnx`: a checkpoint -> an ONNX file that onnxruntime runs without PyTorch.

The graph maps a batch of normalised images (N, 3, S, S) to logits (N, classes), with N dynamic.
What a predictor needs besides the graph travels in the file's metadata: the class names, the test
transform's data settings and the calibrated temperature, so `fgir predict --onnx` and
`fgir serve --onnx` answer as the checkpoint does. A LoRA model is merged first (one plain ViT, no
adapter branches in the graph). The export is checked before it is kept: onnxruntime's logits on a
random batch must equal PyTorch's within `tolerance`.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fgir.config import to_dict
from fgir.engine.checkpoint import restore_model
from fgir.errors import FgirError
from fgir.fileio import atomic_path
from fgir.tools.calibration import stored_temperature

INPUT, OUTPUT = "images", "logits"
METADATA_KEYS = ("fgir.class_names", "fgir.data", "fgir.temperature", "fgir.method", "fgir.source")
PARITY_BATCH = 3  # not 1 and not the batch traced, so the dynamic batch axis is exercised
MAX_BATCH = 4096


class ExportError(FgirError):
    """The export failed or the exported graph does not compute what the model computes."""


@dataclass(frozen=True)
class ExportReport:
    path: Path
    method: str
    num_classes: int
    image_size: int
    max_abs_diff: float  # onnxruntime vs PyTorch on a random batch
    size_bytes: int

    def format(self) -> str:
        return (f"{self.path}: {self.method}, {self.num_classes} classes, {self.image_size} px, dynamic batch; "
                f"{self.size_bytes / 1e6:.1f} MB; onnxruntime vs PyTorch max |diff| {self.max_abs_diff:.1e}")


def require_onnxruntime():
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise FgirError("ONNX export and inference need the `export` extra: pip install 'fgir[export]' "
                        "(onnx, onnxscript, onnxruntime)") from None
    return onnx, onnxruntime


def export_onnx(checkpoint: str | os.PathLike, output: str | os.PathLike, weights: str | os.PathLike | None = None,
                tolerance: float = 1e-4) -> ExportReport:
    """Export `checkpoint` (file or run directory) to `output`. `weights`: the pretrained backbone of an
    adapter-only checkpoint, as for `fgir predict --weights`."""
    require_onnxruntime()
    output = Path(output)
    if output.is_dir():
        raise ExportError(f"{output} is a folder; give the path of the .onnx file to write")
    model, source = restore_model(checkpoint, weights=weights)
    if source.config.model.method == "lora":
        from fgir.models.peft.merge import merge_lora

        model = merge_lora(model)
    metadata = {
        "fgir.class_names": json.dumps(source.class_names),
        "fgir.data": json.dumps(to_dict(source.config)["data"]),
        "fgir.temperature": repr(stored_temperature(source.path)),
        "fgir.method": source.config.model.method,
        "fgir.source": str(source.path),
    }
    size = source.config.data.image_size
    try:
        diff = write_onnx(model, size, output, metadata, tolerance)
    except ExportError as err:
        raise ExportError(f"{source.path}: {err}") from None
    return ExportReport(output, source.config.model.method, len(source.class_names), size, diff,
                        output.stat().st_size)


def write_onnx(model: torch.nn.Module, image_size: int, output: str | os.PathLike, metadata: dict[str, str],
               tolerance: float = 1e-4) -> float:
    """Export `model` (images of `image_size` px -> logits, dynamic batch) to `output` with `metadata`;
    kept only when onnxruntime's logits are PyTorch's within `tolerance`. Returns the max |diff|."""
    onnx, onnxruntime = require_onnxruntime()
    model.eval()
    traced = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with atomic_path(output) as tmp:
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # the exporter's notes on its own internals
                program = torch.onnx.export(model, (traced,), input_names=[INPUT], output_names=[OUTPUT],
                                            dynamic_shapes=({0: batch},), dynamo=True, external_data=False,
                                            verbose=False)
        except Exception as err:  # the exporter raises many kinds for an op it cannot translate
            raise ExportError(f"the {type(model).__name__} model cannot be exported to ONNX: "
                              f"{type(err).__name__}: {str(err).splitlines()[0]}") from None
        proto = program.model_proto
        del proto.metadata_props[:]
        for key, value in metadata.items():
            proto.metadata_props.add(key=key, value=value)
        onnx.save(proto, tmp)
        diff = parity(model, onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"]), image_size)
        if not diff <= tolerance:
            raise ExportError(f"the exported graph's logits differ from PyTorch's by {diff:.2e} (tolerance "
                              f"{tolerance:g}); nothing written to {output}")
    return diff


def parity(model: torch.nn.Module, session, size: int) -> float:
    """Max |onnxruntime - PyTorch| over the logits of a random batch."""
    images = torch.randn(PARITY_BATCH, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(images).float().numpy()
    got = session.run([OUTPUT], {INPUT: images.numpy()})[0]
    return float(np.abs(got - expected).max())
