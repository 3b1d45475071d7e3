"""Eager vs torch.compile (inductor) inference of one model against the machine's matmul peak.

    .venv/bin/python benchmarks/compiled_inference.py --backbone vit_base_patch16_224 --batch-size 8

Compiling happens in the untimed warm-up (minutes on a 2-core CPU); both modes then run the same
batch `--iters` times under inference_mode.
"""

from __future__ import annotations

import argparse
import time

import torch
from suite import matmul_peak

from fgir.config import ModelConfig
from fgir.engine.acceleration import compile_model
from fgir.models.factory import build_model
from fgir.tools.bench import count_flops


def images_per_second(model: torch.nn.Module, images: torch.Tensor, iters: int) -> float:
    with torch.inference_mode():
        model(images)  # warm-up (and compilation)
        start = time.perf_counter()
        for _ in range(iters):
            model(images)
    return len(images) * iters / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vit_base_patch16_224")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--iters", type=int, default=8)
    args = parser.parse_args()
    peak = matmul_peak(quick=False)["float32_gflops"]
    model = build_model(ModelConfig(backbone=args.backbone, pretrained=False), 200, args.image_size).eval()
    gflops = count_flops(model, args.image_size, torch.device("cpu")) / 1e9
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    eager = images_per_second(model, images, args.iters)
    start = time.perf_counter()
    compile_model(model)
    compiled = images_per_second(model, images, args.iters)
    total = time.perf_counter() - start
    print(f"matmul peak {peak:.1f} GFLOP/s; {args.backbone} at {args.image_size}, batch {args.batch_size}, "
          f"{gflops:.2f} GFLOPs/img")
    print(f"eager:    {eager:.3f} img/s = {100 * eager * gflops / peak:.1f}% of the peak")
    print(f"compiled: {compiled:.3f} img/s = {100 * compiled * gflops / peak:.1f}% of the peak "
          f"(compile + warm-up + timing {total:.0f} s)")


if __name__ == "__main__":
    main()
