"""Eager vs compiled (frozen weights) inference of one model against the machine's matmul peak.

    .venv/bin/python benchmarks/compiled_inference.py --backbone vit_base_patch16_224 --batch-size 8 --rounds 5

The model is compiled the way `fgir eval/predict/bench --compile` do (inductor, weights frozen into
the graph); compiling happens in the untimed warm-up. Each round then measures the matmul peak,
the eager model and the compiled model back to back, so a slow spell of the machine moves all
three; the fractions of the peak are per round, and their median is the figure to quote.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from suite import matmul_peak, median_of

from fgir.config import ModelConfig
from fgir.engine.acceleration import compile_model
from fgir.methods import build_model
from fgir.tools.bench import count_flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vit_base_patch16_224")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--iters", type=int, default=8, help="timed batches per model per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    eager = build_model(ModelConfig(backbone=args.backbone, pretrained=False), 200, args.image_size).eval()
    compiled = copy.deepcopy(eager)
    gflops = count_flops(eager, args.image_size, torch.device("cpu")) / 1e9
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    start = time.perf_counter()
    compile_model(compiled, frozen_weights=True)
    with torch.inference_mode():
        difference = (compiled(images) - eager(images)).abs().max().item()
    print(f"{args.backbone} at {args.image_size}, batch {args.batch_size}, {gflops:.2f} GFLOPs/img; compile + first "
          f"batch {time.perf_counter() - start:.0f} s; max |compiled - eager| logit difference {difference:.2e}")
    fractions: dict[str, list[float]] = {"eager": [], "compiled": []}
    for round_index in range(args.rounds):
        peak = matmul_peak(quick=False)["float32_gflops"]
        line = [f"round {round_index + 1}: peak {peak:.1f} GFLOP/s"]
        for name, model in (("eager", eager), ("compiled", compiled)):
            with torch.inference_mode():
                images_per_second = args.batch_size / median_of(lambda model=model: model(images), args.iters)
            fractions[name].append(images_per_second * gflops / peak)
            line.append(f"{name} {images_per_second:.3f} img/s = {100 * fractions[name][-1]:.1f}%")
        print(", ".join(line), flush=True)
    for name, values in fractions.items():
        print(f"{name}: median {100 * statistics.median(values):.1f}% of the peak "
              f"(rounds: {', '.join(f'{100 * v:.1f}' for v in values)})")


if __name__ == "__main__":
    main()
