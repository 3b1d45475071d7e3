"""A Predictor on onnxruntime: `fgir predict --onnx`, `fgir serve --onnx`, `fgir.load_onnx(...)`.

The file written by `fgir export onnx` carries the class names, the data settings of the test
transform and the temperature in its metadata; images go through the same transform as with the
checkpoint, so the answers are the checkpoint's (to float rounding).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from fgir.config import from_dict
from fgir.errors import FgirError
from fgir.tools.onnx_export import INPUT, METADATA_KEYS, OUTPUT, require_onnxruntime
from fgir.tools.predictor import Predictor


class OnnxModel(nn.Module):
    """An onnxruntime session behind a module's call: float32 images in, logits out, on the CPU."""

    def __init__(self, session):
        super().__init__()
        self.session = session

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run([OUTPUT], {INPUT: array})[0])


def onnx_predictor(path: str | os.PathLike, batch_size: int = 32, unknown_below: float | None = None,
                   temperature: float | None = None, threads: int | None = None) -> Predictor:
    """A Predictor for an ONNX file from `fgir export onnx`. `temperature` None takes the stored one."""
    onnx, onnxruntime = require_onnxruntime()
    path = Path(path)
    if not path.is_file():
        raise FgirError(f"{path}: no such ONNX file" + (" (a folder: give the .onnx file)" if path.is_dir() else ""))
    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own kinds for a file that is not a model
        raise FgirError(f"{path}: not a readable ONNX model: {str(err).splitlines()[0]}") from None
    metadata = session.get_modelmeta().custom_metadata_map
    missing = [key for key in METADATA_KEYS if key not in metadata]
    if missing:
        raise FgirError(f"{path}: an ONNX model without fgir's metadata ({', '.join(missing)} missing); "
                        "export it with fgir export onnx CHECKPOINT OUT.onnx")
    data = from_dict({"data": json.loads(metadata["fgir.data"])}, origin=str(path)).data
    stored = float(metadata["fgir.temperature"])
    return Predictor(OnnxModel(session), json.loads(metadata["fgir.class_names"]), data, torch.device("cpu"),
                     batch_size=batch_size, temperature=stored if temperature is None else temperature,
                     unknown_below=unknown_below)
