"""fgir: fine-grained and ultra-fine-grained image recognition with vision transformers.

    import fgir
    model = fgir.load("runs/my-run")          # a run directory or a checkpoint file
    model.predict("bird.jpg", topk=5)
"""

from __future__ import annotations

__version__ = "0.1.0"


def load(path: str, device: str = "auto", weights: str | None = None):
    """A ready-to-use predictor from a checkpoint file or run directory (no dataset needed);
    `weights`: the backbone weights of an adapter-only checkpoint, if not where it was trained."""
    from fgir.tools.predictor import Predictor

    return Predictor.from_checkpoint(path, device=device, weights=weights)
