"""The benchmark suite: every figure against this machine's own limit and against the plain backbone.

    .venv/bin/python benchmarks/suite.py --out benchmarks/results            # everything (long on a CPU)
    .venv/bin/python benchmarks/suite.py --quick --out /tmp/bench            # small ViT, a minute or two
    .venv/bin/python benchmarks/suite.py --parts peak decode --out /tmp/bench
    .venv/bin/python benchmarks/suite.py --parts pipeline --photos ~/data/nabirds/images --out /tmp/bench

Parts (each writes its own table; results.json, results.md and plots go to --out):
  peak      matmul peak of this machine (GFLOP/s, float32, and bfloat16 where supported)
  decode    JPEG decode rate per core at typical image sizes, full vs reduced-scale (draft) decoding
  pipeline  decode + training augmentation per core: naive (full decode, PIL augmentation) vs full
            decode, draft decode and the `fgir data cache` copy with tensor augmentation, against
            ViT-S/16's training step; with --photos DIR, also on your own JPEGs (first --photos-limit)
  models    every registered method on one backbone: FLOPs (and GMACs, the papers' "FLOPs"), inference and training throughput,
            batch-1 latency, peak memory, fraction of the matmul-peak bound, time vs the plain ViT
  growth    cost growth with image size: GLS selection vs attention-rollout selection vs the encoder
  eval      how long a test-split evaluation waits on its data loader (fraction of wall time)
Run it on a quiet machine: concurrent work skews every timing.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from fgir.config import DataConfig, ModelConfig, model_config
from fgir.data import build_dataset, build_loader, build_transform, read_image
from fgir.data.cache import cache_image
from fgir.data.transforms import resize_size
from fgir.fileio import atomic_write_text
from fgir.methods import build_model, get_method, method_names
from fgir.models.backbone import Backbone
from fgir.models.gls import crop_and_resize, gls_scores, selection_flops
from fgir.tools.attention import attention_rollout
from fgir.tools.bench import benchmark, device_name, synchronize
from fgir.tools.plots import save_figure
from fgir.tools.selector_cost import rollout_flops

# Typical image sizes of the dataset families (width, height).
IMAGE_FAMILIES = {"anime crop (DAF:re faces)": (256, 256), "CUB-like photo": (500, 375),
                  "iNat/NABirds-like photo": (1200, 900)}
# The (family, size) rows of the decode and pipeline tables: 1000+ px photos at several sizes, since
# draft decoding for 300 px gains more on some (1/2 scale for 1200x900, 1/4 for 1600x1200 and 2048x1536).
DECODE_IMAGES = [*IMAGE_FAMILIES.items(), ("iNat/NABirds-like photo", (1600, 1200)),
                 ("iNat/NABirds-like photo", (2048, 1536))]


def call_times(run: Callable[[], object], repeats: int) -> list[float]:
    """Wall time of each of `repeats` calls of `run`, after one untimed warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def best_of(run: Callable[[], object], repeats: int) -> float:
    """The shortest call: the least disturbed run, for a machine's peak."""
    return min(call_times(run, repeats))


def median_of(run: Callable[[], object], repeats: int) -> float:
    return statistics.median(call_times(run, repeats))


# --- peak -------------------------------------------------------------------------------------

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def matmul_peak(quick: bool, device: str = "cpu", dtypes: tuple[str, ...] = tuple(DTYPES)) -> dict[str, float]:
    """GFLOP/s of large square matmuls: the bound every model figure is compared with. On a GPU
    the matrices are larger (a 2048 matmul is over in microseconds there) and float32 means true
    float32 (torch's default: TF32 off), as the models run unless told otherwise."""
    n = (1024 if quick else 2048) if device == "cpu" else 8192
    result = {}
    for name, dtype in ((name, DTYPES[name]) for name in dtypes):
        a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
        try:
            seconds = best_of(lambda a=a, b=b: (torch.mm(a, b), synchronize(a.device)), 3 if quick else 10)
        except RuntimeError:  # no bf16 matmul kernel on this CPU
            continue
        result[f"{name}_gflops"] = 2 * n**3 / seconds / 1e9
    return result


# --- decode and pipeline ----------------------------------------------------------------------

def photo_like_jpeg(size: tuple[int, int], seed: int = 0) -> bytes:
    """A JPEG with photo-like entropy (smooth shapes plus sensor-like noise), quality 90."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([127 + 100 * np.sin(x / (17 + 9 * c) + y / (23 + 5 * c) + c) for c in range(3)], axis=-1)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def synthetic_jpeg(folder: Path, size: tuple[int, int]) -> Path:
    """`folder/WxH.jpg`, a photo-like JPEG of `size`, written on first use."""
    path = folder / f"{size[0]}x{size[1]}.jpg"
    if not path.exists():
        path.write_bytes(photo_like_jpeg(size))
    return path


def decode_rates(folder: Path, quick: bool, target: int = 300) -> list[dict]:
    """Images per second (one thread) decoding each family's JPEG fully, and in draft mode for a
    `target` px square (the 224 recipe's resize size)."""
    rows = []
    repeats = 5 if quick else 20
    for family, size in DECODE_IMAGES:
        path = synthetic_jpeg(folder, size)
        full = median_of(lambda path=path: read_image(path), repeats)
        draft = median_of(lambda path=path: read_image(path, min_size=(target, target)), repeats)
        drafted = read_image(path, min_size=(target, target)).size
        rows.append({"family": family, "size": f"{size[0]}x{size[1]}", "draft_size": f"{drafted[0]}x{drafted[1]}",
                     "full_img_per_s": 1 / full, "draft_img_per_s": 1 / draft, "draft_speedup": full / draft})
    return rows


# Decode + augmentation, from what a plain torchvision pipeline does to what fgir does by default.
PIPELINES = {
    "naive": "full decode + transform_backend=pil",
    "full_tensor": "full decode + tensor backend",
    "draft_tensor": "draft decode + tensor backend (fgir's default)",
    "cached_tensor": "`fgir data cache` copy + tensor backend",
}


def pipeline_seconds(paths: list[Path], cache_folder: Path, repeats: int) -> dict[str, float]:
    """Mean seconds per image (one thread) of decoding `paths` and applying the weak 224 training
    augmentation, for each of PIPELINES. The cached copies are written into `cache_folder` by the
    code of `fgir data cache` (short side 300, JPEG q95)."""
    data = DataConfig(image_size=224, augment="weak")
    target = resize_size(data)
    pil, tensor = (build_transform(replace(data, transform_backend=backend), train=True) for backend in ("pil", "tensor"))
    cache_folder.mkdir(parents=True, exist_ok=True)
    pairs = [(path, cache_folder / f"{i}{path.suffix}") for i, path in enumerate(paths)]
    for path, copy in pairs:
        outcome = cache_image(str(path), str(copy), target)
        if outcome not in ("written", "up to date"):
            raise SystemExit(outcome)
    ways = {
        "naive": lambda path, copy: pil(read_image(path)),
        "full_tensor": lambda path, copy: tensor(read_image(path)),
        "draft_tensor": lambda path, copy: tensor(read_image(path, min_size=(target, target))),
        "cached_tensor": lambda path, copy: tensor(read_image(copy)),
    }
    return {name: median_of(lambda way=way: [way(path, copy) for path, copy in pairs], repeats) / len(pairs)
            for name, way in ways.items()}


def pipeline_row(seconds: dict[str, float], vit_s_train_img_per_s_per_core: float | None) -> dict:
    """img/s of each pipeline, its speed-up over the naive one, and fgir's default against ViT-S's step."""
    row = {f"{name}_img_per_s": 1 / seconds[name] for name in PIPELINES}
    row.update({f"{name}_speedup": seconds["naive"] / seconds[name] for name in PIPELINES if name != "naive"})
    if vit_s_train_img_per_s_per_core:
        row["x_vit_s16_train_step_per_core"] = (1 / seconds["draft_tensor"]) / vit_s_train_img_per_s_per_core
    return row


def pipeline_rates(folder: Path, quick: bool, vit_s_train_img_per_s_per_core: float | None) -> list[dict]:
    """Decode + weak training augmentation at 224 px per core (one thread), each PIPELINES way, on
    each synthetic family image."""
    repeats = 5 if quick else 20
    rows = []
    for family, size in DECODE_IMAGES:
        path = synthetic_jpeg(folder, size)
        seconds = pipeline_seconds([path], folder / f"cached-{size[0]}x{size[1]}", repeats)
        rows.append({"family": family, "size": f"{size[0]}x{size[1]}",
                     **pipeline_row(seconds, vit_s_train_img_per_s_per_core)})
    return rows


def photo_files(folder: Path, limit: int) -> list[Path]:
    """The first `limit` JPEG files under `folder` (recursive, in path order)."""
    paths = sorted(path for path in folder.rglob("*") if path.suffix.lower() in (".jpg", ".jpeg") and path.is_file())
    if not paths:
        raise SystemExit(f"--photos {folder}: no .jpg or .jpeg files found")
    return paths[:limit]


def photo_rates(photos: Path, limit: int, scratch: Path, quick: bool,
                vit_s_train_img_per_s_per_core: float | None) -> tuple[dict, list[dict]]:
    """The pipeline measurement on your own JPEGs: one summary row (files, median size and bits per
    pixel, mean per-image rates) and one row per file (size, bits per pixel)."""
    paths = photo_files(photos, limit)
    files = []
    for path in paths:
        with Image.open(path) as image:
            width, height = image.size
        files.append({"file": str(path.relative_to(photos)), "size": f"{width}x{height}", "pixels": width * height,
                      "kb": path.stat().st_size / 1024, "bpp": 8 * path.stat().st_size / (width * height)})
    by_pixels = sorted(files, key=lambda row: row["pixels"])
    seconds = pipeline_seconds(paths, scratch / "photo-cache", 1 if quick else 3)
    summary = {"folder": str(photos), "files": len(files), "median_size": by_pixels[len(files) // 2]["size"],
               "median_bpp": statistics.median(row["bpp"] for row in files),
               "median_kb": statistics.median(row["kb"] for row in files),
               **pipeline_row(seconds, vit_s_train_img_per_s_per_core)}
    return summary, files


# --- models -----------------------------------------------------------------------------------

def model_rows(backbone: str, image_sizes: list[int], methods: list[str], batch_size: int, warmup: int, iters: int,
               peak_gflops: float | None, compile: bool = False, device: str = "cpu",
               cnn_backbone: str = "resnet101") -> list[dict]:
    rows = []
    for image_size in image_sizes:
        plain_time = None
        for method in methods:
            # Methods with a network of their own (cnn, cal_cnn) run on the CNN of GLSim's table.
            network = cnn_backbone if get_method(method).own_network else backbone
            config = model_config(method, backbone=network, pretrained=False)
            try:
                # A process of its own per model: its peak memory is not hidden by pages an earlier
                # model left to the allocator.
                with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
                    report = pool.submit(benchmark, config, num_classes=200, image_size=image_size, device=device,
                                         batch_size=batch_size, warmup=warmup, iters=iters,
                                         compile=compile).result()
            except Exception as error:  # noqa: BLE001 - one broken method must not hide the others
                print(f"  {method} at {image_size}: failed: {error}", file=sys.stderr)
                rows.append({"method": method, "image_size": image_size, "error": str(error)})
                continue
            row = {"method": method, **{k: report[k] for k in (
                "image_size", "params_total", "params_trainable", "gflops_per_image", "gmacs_per_image", "infer_img_per_s",
                "latency_ms_batch1", "train_img_per_s", "peak_memory_mb")}}
            if peak_gflops:
                row["infer_peak_fraction"] = report["gflops_per_image"] * report["infer_img_per_s"] / peak_gflops
                if report["train_img_per_s"]:
                    # A training step costs about 3 forward passes (forward, and backward for inputs and weights).
                    row["train_peak_fraction"] = 3 * report["gflops_per_image"] * report["train_img_per_s"] / peak_gflops
            if method == "vit":
                plain_time = 1 / report["infer_img_per_s"]
            if plain_time:
                row["time_vs_vit"] = (1 / report["infer_img_per_s"]) / plain_time
            rows.append(row)
            print(f"  {method} at {image_size}: {row}", file=sys.stderr, flush=True)
    return rows


# --- growth -----------------------------------------------------------------------------------

def growth_rows(backbone_name: str, sizes: list[int], quick: bool) -> list[dict]:
    rows = []
    for size in sizes:
        rows.append(growth_row(backbone_name, size, quick))
        print(f"  growth {size}: {rows[-1]}", file=sys.stderr, flush=True)
    return rows


@torch.inference_mode()
def growth_row(backbone_name: str, size: int, quick: bool) -> dict:
    """At one image size (batch 1): encoder pass, GLS selection (scores + top-8 + crop + resize) and
    attention-rollout selection (attention maps recorded, heads averaged, L products of T x T)."""
    backbone = Backbone.create(backbone_name, pretrained=False, img_size=size).eval()
    images = torch.randn(1, 3, size, size)
    tokens = backbone.forward_features(images)
    patches = backbone.patch_tokens(tokens)
    num_patches, dim = patches.shape[1], patches.shape[2]
    boxes = torch.tensor([[0, 0, size // 2, size // 2]])

    def gls() -> None:
        gls_scores(tokens[:, 0], patches, "cosine").topk(8, dim=1)
        crop_and_resize(images, boxes)

    repeats = 2 if quick else 5
    encoder_s = median_of(lambda: backbone.forward_features(images), repeats)
    gls_s = median_of(gls, max(repeats, 10))
    rollout_s = median_of(lambda: attention_rollout(backbone, images), repeats)
    tokens_count = num_patches + backbone.num_prefix_tokens
    return {
        "image_size": size, "tokens": tokens_count,
        "encoder_ms": 1e3 * encoder_s, "gls_ms": 1e3 * gls_s,
        # Rollout re-runs the encoder to record the maps; its own cost is the rest.
        "rollout_ms": 1e3 * rollout_s, "rollout_extra_ms": 1e3 * max(rollout_s - encoder_s, 0.0),
        "gls_gflops": selection_flops(num_patches, dim, "cosine", (size, size)) / 1e9,
        # L - 1 products of T x T matrices (2 T^3 FLOPs each) and the per-layer renormalisation: grows like L * N^3.
        "rollout_gflops": rollout_flops(tokens_count, backbone.blocks[0].attn.num_heads, backbone.num_blocks,
                                        dim) / 1e9,
    }


# --- eval loader wait -------------------------------------------------------------------------

def eval_wait(folder: Path, num_images: int, backbone: str, batch_size: int) -> dict:
    """Evaluate `num_images` CUB-like JPEGs with the default loader settings and measure the time
    spent waiting for the next batch vs the whole pass."""
    image_dir = folder / "eval-images"
    image_dir.mkdir(exist_ok=True)
    jpeg = photo_like_jpeg(IMAGE_FAMILIES["CUB-like photo"])
    for i in range(num_images):
        (image_dir / f"{i}.jpg").write_bytes(jpeg)
    (folder / "test.csv").write_text("class_id,dir\n" + "".join(f"{i % 10},{i}.jpg\n" for i in range(num_images)))
    data = DataConfig(name="bench", format="csv", root=str(folder), image_dir="eval-images", train="test.csv",
                      val=None, test="test.csv", num_classes=10, image_size=224)
    dataset = build_dataset(data, "test", build_transform(data, train=False))
    loader = build_loader(dataset, batch_size=batch_size, train=False, seed=0, num_workers=data.num_workers)
    model = build_model(ModelConfig(backbone=backbone, pretrained=False), 10, 224).eval()
    waited = 0.0
    start = time.perf_counter()
    with torch.inference_mode():
        iterator = iter(loader)
        while True:
            before = time.perf_counter()
            try:
                images, _ = next(iterator)
            except StopIteration:
                break
            waited += time.perf_counter() - before
            model(images)
    total = time.perf_counter() - start
    return {"images": num_images, "backbone": backbone, "batch_size": batch_size,
            "workers": loader.num_workers, "total_s": total, "loader_wait_s": waited, "wait_fraction": waited / total}


# --- report -----------------------------------------------------------------------------------

def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return "(none)\n"
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(column)) for column in columns) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)


def growth_plot(rows: list[dict], path: Path) -> None:
    figure = Figure(figsize=(10, 4))
    left, right = figure.subplots(1, 2)
    sizes = [row["image_size"] for row in rows]
    # One colour per method in both panels.
    for key, label, colour in (("encoder_ms", "encoder pass", "tab:blue"), ("gls_ms", "GLS selection", "tab:orange"),
                               ("rollout_extra_ms", "rollout (extra)", "tab:green")):
        left.plot(sizes, [row[key] for row in rows], marker="o", label=label, color=colour)
    left.set(xlabel="image size (px)", ylabel="ms (batch 1)", yscale="log", title="time")
    for key, label, colour in (("gls_gflops", "GLS selection", "tab:orange"), ("rollout_gflops", "rollout", "tab:green")):
        right.plot(sizes, [row[key] for row in rows], marker="o", label=label, color=colour)
    right.set(xlabel="image size (px)", ylabel="GFLOPs", yscale="log", title="FLOPs")
    left.legend()
    right.legend()
    save_figure(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--quick", action="store_true", help="small ViT, fewer repeats")
    parser.add_argument("--parts", nargs="+", default=["peak", "decode", "pipeline", "models", "growth", "eval"])
    parser.add_argument("--backbone", default=None, help="default: vit_base_patch16_224 (vit_tiny_patch16_224 with --quick)")
    parser.add_argument("--cnn-backbone", default="resnet101", help="the network of cnn and cal_cnn in the model table")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="model table image sizes (default 224)")
    parser.add_argument("--methods", nargs="+", default=None, help="default: every registered method")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches before each measurement")
    parser.add_argument("--iters", type=int, default=3, help="timed batches per measurement")
    parser.add_argument("--device", default="cpu",
                        help="peak and model table on this device, e.g. cuda (decode, pipeline and eval stay on the CPU)")
    parser.add_argument("--compile", action="store_true",
                        help="model table: torch.compile with frozen weights (the warm-up batches compile)")
    parser.add_argument("--eval-images", type=int, default=1000)
    parser.add_argument("--photos", type=Path, default=None,
                        help="folder of your own JPEGs: the pipeline part also measures them (mean per image)")
    parser.add_argument("--photos-limit", type=int, default=50, help="how many of the --photos files (first in path order)")
    args = parser.parse_args()
    backbone = args.backbone or ("vit_tiny_patch16_224" if args.quick else "vit_base_patch16_224")
    out = Path(args.out)
    results: dict = {"date": date.today().isoformat(), "machine": device_name(torch.device("cpu")),
                     "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                     "torch": torch.__version__, "python": platform.python_version(), "backbone": backbone,
                     "device": args.device, "device_name": device_name(torch.device(args.device))}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        if "peak" in args.parts:
            results["peak"] = matmul_peak(args.quick, args.device)
            print(f"peak: {results['peak']}", file=sys.stderr, flush=True)
        peak = results.get("peak", {}).get("float32_gflops")
        if "decode" in args.parts:
            results["decode"] = decode_rates(folder, args.quick)
        if "pipeline" in args.parts:
            vit_s = benchmark(ModelConfig(backbone="vit_small_patch16_224", pretrained=False), num_classes=200,
                              image_size=224, device="cpu", batch_size=args.batch_size, warmup=1, iters=args.iters)
            per_core = vit_s["train_img_per_s"] / torch.get_num_threads()
            results["vit_s16_train_img_per_s"] = vit_s["train_img_per_s"]
            results["pipeline"] = pipeline_rates(folder, args.quick, per_core)
            if args.photos:
                summary, files = photo_rates(args.photos, args.photos_limit, folder, args.quick, per_core)
                results["photos"], results["photo_files"] = [summary], files
        if "models" in args.parts:
            results["models_compiled"] = args.compile
            methods = args.methods or method_names()
            methods = ["vit", *[m for m in methods if m != "vit"]]
            results["models"] = model_rows(backbone, args.sizes or [224], methods, args.batch_size, args.warmup,
                                           args.iters, peak, args.compile, args.device, args.cnn_backbone)
        if "growth" in args.parts:
            sizes = [224, 320] if args.quick else [224, 320, 448, 640]
            results["growth"] = growth_rows(backbone, sizes, args.quick)
            growth_plot(results["growth"], out / "growth.png")
        if "eval" in args.parts:
            results["eval"] = eval_wait(folder, args.eval_images, "vit_small_patch16_224", 64)
    sections = [f"# Benchmark suite: {results['machine']}, {results['cores']} cores, torch {results['torch']}, "
                f"{results['date']}\n", f"backbone for the model table: {backbone}"
                f"{' (torch.compile, frozen weights)' if args.compile else ''}, peak and models on "
                f"{results['device_name']}\n"]
    for key in ("peak", "eval"):
        if key in results:
            sections.append(f"## {key}\n\n" + markdown_table([results[key]]))
    legend = "; ".join(f"{name}: {meaning}" for name, meaning in PIPELINES.items()) + "\n\n"
    for key in ("decode", "pipeline", "photos", "models", "growth"):
        if key in results:
            sections.append(f"## {key}\n\n" + (legend if key in ("pipeline", "photos") else "") + markdown_table(results[key]))
    atomic_write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
    atomic_write_text(out / "results.md", "\n".join(sections))
    print("\n".join(sections))


if __name__ == "__main__":
    main()
