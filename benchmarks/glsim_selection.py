"""GLSim's selection cost against one encoder pass (spec/glsim.md: selection should be nearly free).

Times, for ViT-B/16 with random weights at each image size: one encoder pass (forward_features)
and the selection step that GLSim adds on top of it (GLS scores, top-O, boxes, batched crop and
resize), both under inference_mode, median of repeated runs. Prints a markdown table.

    .venv/bin/python benchmarks/glsim_selection.py --sizes 224 448 --batch-size 8
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from fgir.models.backbone import Backbone
from fgir.models.gls import boxes_from_indices, crop_and_resize, gls_scores


def median_seconds(step: Callable[[], object], repeats: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.inference_mode()
def measure(size: int, batch_size: int, top_o: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    backbone = Backbone.create("vit_base_patch16_224", pretrained=False, img_size=size).eval()
    images = torch.randn(batch_size, 3, size, size)
    tokens = backbone.forward_features(images)

    def select() -> torch.Tensor:
        scores = gls_scores(tokens[:, 0], backbone.patch_tokens(tokens), "cosine")
        indices = scores.topk(top_o, dim=1).indices
        boxes = boxes_from_indices(indices, backbone.grid_size, backbone.patch_size, (size, size), "inclusive")
        return crop_and_resize(images, boxes)

    encoder = median_seconds(lambda: backbone.forward_features(images), repeats)
    selection = median_seconds(select, max(repeats, 10))
    return {"size": size, "encoder_ms": 1e3 * encoder, "selection_ms": 1e3 * selection,
            "ratio": selection / encoder}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--top-o", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"ViT-B/16, batch {args.batch_size}, top-O {args.top_o}, {torch.get_num_threads()} threads")
    print("| image size | encoder pass | selection + crop + resize | ratio |")
    print("|---|---|---|---|")
    for size in args.sizes:
        row = measure(size, args.batch_size, args.top_o, args.repeats)
        print(f"| {row['size']} | {row['encoder_ms']:.0f} ms | {row['selection_ms']:.2f} ms | {100 * row['ratio']:.2f}% |",
              flush=True)


if __name__ == "__main__":
    main()
