"""fgir: fine-grained and ultra-fine-grained image recognition with vision transformers.

    import fgir
    model = fgir.load("runs/my-run")          # a run directory or a checkpoint file
    model = fgir.load("hf-hub:org/cub-glsim")  # a run pushed with `fgir hub push`
    model.predict("bird.jpg", topk=5)
    fgir.load_onnx("cub.onnx").predict("bird.jpg")  # a file from `fgir export onnx`, on onnxruntime
"""

from __future__ import annotations

__version__ = "0.1.0"


def load(path: str, device: str = "auto", weights: str | None = None):
    """A ready-to-use predictor from a checkpoint file, a run directory or `hf-hub:ORG/NAME[@revision]`
    (no dataset needed);
    `weights`: the backbone weights of an adapter-only checkpoint, if not where it was trained."""
    from fgir.tools.predictor import Predictor

    return Predictor.from_checkpoint(path, device=device, weights=weights)


def load_onnx(path: str, batch_size: int = 32):
    """The same predictor on onnxruntime, from an ONNX file written by `fgir export onnx`."""
    from fgir.tools.onnx_predictor import onnx_predictor

    return onnx_predictor(path, batch_size=batch_size)
