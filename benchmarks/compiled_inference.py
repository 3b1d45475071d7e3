"""Eager vs compiled (frozen weights) inference of one model against the machine's matmul peak,
and with `--onnx` the same model exported by `fgir export onnx`'s code on onnxruntime.

    .venv/bin/python benchmarks/compiled_inference.py --backbone vit_base_patch16_224 --batch-size 8 --rounds 5
    .venv/bin/python benchmarks/compiled_inference.py --method glsim --batch-size 1 --onnx

The model is compiled the way `fgir eval/predict/bench --compile` do (inductor, weights frozen into
the graph); compiling happens in the untimed warm-up. Each round then measures the matmul peak,
the eager model and the compiled model back to back, so a slow spell of the machine moves all
three; the fractions of the peak are per round, and their median is the figure to quote.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
from suite import matmul_peak, median_of

from fgir.config import model_config
from fgir.engine.acceleration import compile_model
from fgir.methods import build_model
from fgir.tools.bench import count_flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vit_base_patch16_224")
    parser.add_argument("--method", default="vit", help="model.method, e.g. vit or glsim")
    parser.add_argument("--onnx", action="store_true", help="also time onnxruntime (needs the export extra)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--iters", type=int, default=8, help="timed batches per model per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = model_config(args.method, backbone=args.backbone, pretrained=False, zero_init_head=False)
    eager = build_model(config, 200, args.image_size).eval()
    compiled = copy.deepcopy(eager)
    gflops = count_flops(eager, args.image_size, torch.device("cpu")) / 1e9
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    start = time.perf_counter()
    compile_model(compiled, frozen_weights=True)
    with torch.inference_mode():
        difference = (compiled(images) - eager(images)).abs().max().item()
    print(f"{args.method} {args.backbone} at {args.image_size}, batch {args.batch_size}, {gflops:.2f} GFLOPs/img "
          f"({gflops / 2:.2f} GMACs); "
          f"compile + first batch {time.perf_counter() - start:.0f} s; max |compiled - eager| logit difference "
          f"{difference:.2e}")
    models = {"eager": eager, "compiled": compiled}
    if args.onnx:
        models["onnxruntime"] = onnx_model(eager, args.image_size)
    fractions: dict[str, list[float]] = {name: [] for name in models}
    for round_index in range(args.rounds):
        peak = matmul_peak(quick=False, dtypes=("float32",))["float32_gflops"]  # the models run in float32
        line = [f"round {round_index + 1}: peak {peak:.1f} GFLOP/s"]
        for name, model in models.items():
            with torch.inference_mode():
                images_per_second = args.batch_size / median_of(lambda model=model: model(images), args.iters)
            fractions[name].append(images_per_second * gflops / peak)
            line.append(f"{name} {images_per_second:.3f} img/s = {100 * fractions[name][-1]:.1f}%")
        print(", ".join(line), flush=True)
    for name, values in fractions.items():
        print(f"{name}: median {100 * statistics.median(values):.1f}% of the peak "
              f"(rounds: {', '.join(f'{100 * v:.1f}' for v in values)})")


def onnx_model(model: torch.nn.Module, image_size: int) -> torch.nn.Module:
    """`model` exported as `fgir export onnx` does (parity-checked to 1e-4) and loaded on onnxruntime."""
    import onnxruntime

    from fgir.tools.onnx_export import write_onnx
    from fgir.tools.onnx_predictor import OnnxModel

    path = Path(tempfile.mkdtemp()) / "model.onnx"
    start = time.perf_counter()
    difference = write_onnx(model, image_size, path, {})
    print(f"onnx export {time.perf_counter() - start:.0f} s, max |onnxruntime - eager| {difference:.2e}")
    return OnnxModel(onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]))


if __name__ == "__main__":
    main()
