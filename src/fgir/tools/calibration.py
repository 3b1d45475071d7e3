"""Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", 2017): one scalar
T > 0 divides the logits so that softmax probabilities match how often the model is right. T is
fitted on held-out data (the val split) by minimising the negative log-likelihood and stored in the
checkpoint's metadata, so `predict`, `eval` and the web app use it with the checkpoint alone.

    calibrate_checkpoint("runs/dafre-vit")        # fits T on val, writes it into best.safetensors
    Predictor.from_checkpoint("runs/dafre-vit")   # now divides logits by T
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import torch

from fgir.config import DataConfig
from fgir.engine.checkpoint import CheckpointError, read_metadata, update_metadata
from fgir.engine.metrics import CHUNK_ROWS, expected_calibration_error, negative_log_likelihood
from fgir.errors import FgirError
from fgir.hub import PREFIX, is_hub_reference
from fgir.tools.scoring import score_split

CALIBRATION_KEY = "calibration"  # checkpoint metadata entry: JSON with "temperature" and fit details
ECE_BINS = 15
# A fit reaching these bounds is degenerate: the split is separated perfectly (the NLL keeps falling
# as T -> 0, e.g. training images) or the model is worse than chance (T -> infinity).
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 100.0


class CalibrationError(FgirError, ValueError):
    """A temperature that cannot be fitted or a stored calibration that cannot be read."""


def _nll_derivatives(logits: torch.Tensor, labels: torch.Tensor, beta: float) -> tuple[float, float]:
    """First and second derivative in beta of the mean NLL of softmax(beta * logits):
    mean(E_p[z] - z_y) and mean(Var_p[z]) where p = softmax(beta * z)."""
    first = second = 0.0
    for start in range(0, len(labels), CHUNK_ROWS):
        z = logits[start:start + CHUNK_ROWS].double()
        z_label = z.gather(1, labels[start:start + CHUNK_ROWS, None].long()).squeeze(1)
        p = (beta * z).softmax(dim=1)
        mean = (p * z).sum(dim=1)
        first += (mean - z_label).sum().item()
        second += (p * (z - mean[:, None]) ** 2).sum().item()
    return first / len(labels), second / len(labels)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T in [MIN_TEMPERATURE, MAX_TEMPERATURE] minimising the NLL of softmax(logits / T).

    The NLL is convex in beta = 1/T (its second derivative is a variance), so its minimum is where
    the first derivative changes sign: Newton steps in beta, kept inside a shrinking bracket (a
    geometric bisection step when Newton would leave it). A bound is returned when the minimum
    lies beyond it.
    """
    if len(labels) == 0:
        raise CalibrationError("cannot fit a temperature on zero samples")
    low, high = 1 / MAX_TEMPERATURE, 1 / MIN_TEMPERATURE
    beta = 1.0
    for iteration in range(200):
        first, second = _nll_derivatives(logits, labels, beta)
        if iteration == 0 and second == 0:
            return 1.0  # every row's logits are equal: no temperature changes anything
        if first > 0:
            high = beta
        else:
            low = beta
        newton = beta - first / second if second > 0 else math.nan
        step = newton if low < newton < high else math.sqrt(low * high)
        if abs(step - beta) <= 1e-10 * beta or high / low < 1 + 1e-10:
            beta = step
            break
        beta = step
    return 1 / min(max(beta, 1 / MAX_TEMPERATURE), 1 / MIN_TEMPERATURE)


def calibration_summary(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> dict[str, float]:
    """NLL and ECE (in %, 15 bins) before (T = 1) and after dividing the logits by `temperature`."""
    return {
        "nll_before": negative_log_likelihood(logits, labels),
        "nll_after": negative_log_likelihood(logits, labels, temperature),
        "ece_before": 100 * expected_calibration_error(logits, labels, ECE_BINS),
        "ece_after": 100 * expected_calibration_error(logits, labels, ECE_BINS, temperature),
    }


def read_calibration(checkpoint_path: str | os.PathLike) -> dict[str, Any] | None:
    """The calibration stored in a checkpoint (at least {"temperature": T}), or None if it has none."""
    metadata = read_metadata(checkpoint_path)
    if CALIBRATION_KEY not in metadata:
        return None
    try:
        calibration = json.loads(metadata[CALIBRATION_KEY])
        temperature = float(calibration["temperature"])
    except (ValueError, TypeError, KeyError) as err:
        raise CheckpointError(f"{checkpoint_path}: unreadable '{CALIBRATION_KEY}' metadata "
                              f"({metadata[CALIBRATION_KEY][:200]!r}): {err}") from err
    if not (math.isfinite(temperature) and temperature > 0):
        raise CheckpointError(f"{checkpoint_path}: calibration temperature must be a positive number, got {temperature}")
    return calibration


def stored_temperature(checkpoint_path: str | os.PathLike) -> float:
    """The checkpoint's fitted temperature, 1.0 (the raw softmax) when it was never calibrated."""
    calibration = read_calibration(checkpoint_path)
    return 1.0 if calibration is None else float(calibration["temperature"])


def calibrate_checkpoint(
    checkpoint_path: str | os.PathLike,
    *,
    split: str = "val",
    data_overrides: DataConfig | list[str] | None = None,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int | None = None,
    progress: bool = True,
    weights: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Fit the temperature of a checkpoint (file or run directory) on `split` and store it in the
    checkpoint's metadata (the file is rewritten atomically; weights unchanged). Calibrating again
    replaces the stored temperature. Returns what was stored plus the checkpoint path.
    `weights`: the backbone weights of an adapter-only checkpoint (see `restore_model`).
    """
    if is_hub_reference(checkpoint_path):
        raise CalibrationError(
            f"{checkpoint_path}: calibrating rewrites the checkpoint, and a pulled Hub run is a read-only "
            f"file of the Hub cache; download a copy (hf download {checkpoint_path.removeprefix(PREFIX)} "
            "--local-dir DIR) and calibrate DIR"
        )
    scored = score_split(checkpoint_path, split, data_overrides=data_overrides, device=device,
                         precision=precision, batch_size=batch_size, progress=progress, weights=weights)
    temperature = fit_temperature(scored.logits, scored.labels)
    if temperature <= MIN_TEMPERATURE * 1.001:
        raise CalibrationError(
            f"{scored.path}: temperature fit on split '{split}' ({len(scored.labels)} images) ran to its bound "
            f"T={temperature:g}: the model separates this split perfectly; calibrate on held-out images the "
            "model was not trained on"
        )
    if temperature >= MAX_TEMPERATURE / 1.001:
        raise CalibrationError(
            f"{scored.path}: temperature fit on split '{split}' ({len(scored.labels)} images) ran to its bound "
            f"T={temperature:g}: the model's scores carry (almost) no information on this split (top-1 "
            f"{100 * (scored.logits.argmax(dim=1) == scored.labels).double().mean().item():.1f}%, uniform "
            "probabilities fit best); train it first"
        )
    calibration = {
        "temperature": temperature,
        "split": split,
        "dataset": scored.data.name,
        "num_samples": len(scored.labels),
        **calibration_summary(scored.logits, scored.labels, temperature),
    }
    update_metadata(scored.path, {CALIBRATION_KEY: json.dumps(calibration)})
    return {**calibration, "skipped_images": scored.skipped, "checkpoint": str(scored.path.resolve())}


def format_calibration(result: dict[str, Any]) -> str:
    """The result of `calibrate_checkpoint` as a few lines a person reads."""
    lines = [f"{result['dataset']} {result['split']}: {result['num_samples']} images scored ({result['checkpoint']})"]
    if result["skipped_images"]:
        lines.append(f"skipped: {len(result['skipped_images'])} unreadable images (--json lists them)")
    lines += [
        f"  temperature      T = {result['temperature']:.4g} (probabilities are softmax(logits / T))",
        f"  NLL              {result['nll_before']:.4f} -> {result['nll_after']:.4f}",
        f"  ECE ({ECE_BINS} bins)    {result['ece_before']:.2f}% -> {result['ece_after']:.2f}%",
        "stored in the checkpoint: fgir predict, eval, explain and serve now use T",
    ]
    return "\n".join(lines)
