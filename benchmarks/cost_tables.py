"""The papers' cost tables measured with fgir, side by side with the published numbers (markdown).

    .venv/bin/python benchmarks/cost_tables.py selectors     # GLSim Table 1: selector FLOPs and CPU time
    .venv/bin/python benchmarks/cost_tables.py throughput    # GLSim's CUB figure: img/s as ratios to the ViT
    .venv/bin/python benchmarks/cost_tables.py ila           # ILA Table 1: TTP, GFLOPs and GMACs at 448

`--write docs/benchmarks.md` also puts the table between that file's `<!-- cost_tables:NAME -->` and
`<!-- /cost_tables:NAME -->` lines. Every model has random weights (pretrained=false): nothing is
downloaded. Counting-only tables build their models on the meta device (shapes, no memory).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from fgir.config import ModelConfig, load_config
from fgir.methods import build_model, method_names
from fgir.tools.bench import count_flops, device_name, throughput
from fgir.tools.paper_tables import (
    GLSIM_SELECTOR_MFLOPS,
    GLSIM_SELECTOR_PERCENT,
    GLSIM_SELECTOR_SIZES,
    GLSIM_THROUGHPUT,
    ILA_DATASETS,
    ILA_TTP,
)
from fgir.tools.selector_cost import SELECTORS, input_bytes, time_selector

META = torch.device("meta")
VIT_B16 = "vit_base_patch16_224"
HEADS, DEPTH, DIM, PATCH = 12, 12, 768, 16
PSM_STRIDE = 12  # TransFG's overlapping patches, as GLSim's Table 1 counts its PSM
SELECTOR_LABELS = {"psm": "TransFG PSM", "rollout": "attention rollout (RAMS-Trans)", "maws": "FFVT MAWS",
                   "gls": "GLS (GLSim)"}


def machine_line() -> str:
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return (f"{device_name(torch.device('cpu'))}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
            f"torch {torch.__version__}; `uptime`: {load}")


def vit_tokens(size: int, stride: int = PATCH) -> int:
    """CLS + the patches of a square image whose patch convolution slides by `stride`."""
    return ((size - PATCH) // stride + 1) ** 2 + 1


def meta_model(model: ModelConfig, num_classes: int, size: int) -> torch.nn.Module:
    with META:
        return build_model(model, num_classes, size, pretrained=False)


# --- GLSim Table 1 ---------------------------------------------------------------------------------

def selectors_table(max_gflops: float, max_input_gb: float, iters: int) -> str:
    backbone = {size: count_flops(meta_model(ModelConfig(method="vit", backbone=VIT_B16, pretrained=False), 200, size),
                                  size, META) for size in GLSIM_SELECTOR_SIZES}
    lines = [f"Machine: {machine_line()}", "",
             "| image size | ViT-B/16 GMACs | ViT-B/16 GFLOPs |", "|---|---|---|"]
    lines += [f"| {size} | {flops / 2e9:.2f} | {flops / 1e9:.2f} |" for size, flops in backbone.items()]
    lines += ["", "| selector | px | tokens | maps x heads | paper MFLOPs (% of backbone) | fgir MFLOPs | fgir / paper "
              "| fgir % of backbone MACs | fgir % of backbone FLOPs | CPU ms, batch 1 |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name, selector in SELECTORS.items():
        layers = selector.layers_read(DEPTH)
        for index, size in enumerate(GLSIM_SELECTOR_SIZES):
            tokens = vit_tokens(size, PSM_STRIDE if name == "psm" else PATCH)
            flops = selector.flops(tokens, HEADS, layers, DIM)
            paper = GLSIM_SELECTOR_MFLOPS[name][index]
            percent = GLSIM_SELECTOR_PERCENT[name][index]
            paper_text = f"{paper:.2g}" + (f" ({percent:g}%)" if percent is not None else "")
            memory = input_bytes(name, tokens, HEADS, DIM) / 1e9
            if flops > max_gflops * 1e9:
                timing = f"not run: {flops / 1e12:.2g} TFLOPs (limit {max_gflops / 1e3:g})"
            elif memory > max_input_gb:
                timing = f"not run: {memory:.1f} GB per map (limit {max_input_gb:g})"
            else:
                timing = selector_ms(name, tokens, layers, iters)
            print(f"  {name} {size}: {timing}", file=sys.stderr, flush=True)
            lines.append(f"| {SELECTOR_LABELS[name]} | {size} | {tokens:,} | {layers} x {HEADS} | {paper_text} "
                         f"| {flops / 1e6:.3g} | {flops / 1e6 / paper:.2f}x | {100 * flops / (backbone[size] / 2):.3g}% "
                         f"| {100 * flops / backbone[size]:.3g}% | {timing} |")
    return "\n".join(lines)


def selector_ms(name: str, tokens: int, layers: int, iters: int, single_call_s: float = 2.0) -> str:
    """Median of `iters` calls after a warm-up; a selector whose first call takes longer than
    `single_call_s` is reported by that one call."""
    first = time_selector(name, tokens, HEADS, layers, DIM, warmup=0, iters=1)
    if first > 1e3 * single_call_s:
        return f"{first:.3g} (one call)"
    return f"{time_selector(name, tokens, HEADS, layers, DIM, iters=iters):.3g}"


# --- GLSim's CUB accuracy / throughput figure ------------------------------------------------------

THROUGHPUT_MODELS = [  # (label, paper key, recipe, overrides)
    ("ViT-B/16", "vit", "cub/vit", []),
    ("GLSim", "glsim", "cub/glsim", []),
    ("TransFG (overlap stride 12)", "transfg", "cub/transfg", ["model.transfg.overlap_stride=12"]),
    ("FFVT", "ffvt", "cub/ffvt", []),
    ("CAL (ResNet-101)", "cal", "cub/cal_resnet101", []),
    ("ResNet-101", "cnn", "cub/resnet101", []),
]


def registered(entries: list, method_of) -> tuple[list, list[str]]:
    known = set(method_names())
    kept = [entry for entry in entries if method_of(entry) in known]
    skipped = sorted({method_of(entry) for entry in entries if method_of(entry) not in known})
    if skipped:
        print(f"skipped (not registered in fgir.methods): {', '.join(skipped)}", file=sys.stderr)
    return kept, skipped


@torch.inference_mode()
def throughput_table(sizes: list[int], batch_size: int, warmup: int, iters: int, rounds: int) -> str:
    models, skipped = registered(THROUGHPUT_MODELS, lambda entry: entry[1])
    before = machine_line()
    lines = ["| model | px | CPU img/s per round | CPU img/s (median) | CPU ratio to ViT, median of rounds (range) "
             "| paper GPU img/s "
             "| paper ratio to ViT |", "|---|---|---|---|---|---|---|"]
    for size in sizes:
        built = {}
        for label, _, recipe, overrides in models:
            config = load_config([recipe],
                                 [*overrides, "model.pretrained=false", f"data.image_size={size}"])
            torch.manual_seed(0)
            built[label] = build_model(config.model, config.data.num_classes, size, pretrained=False).eval()
        images = torch.randn(batch_size, 3, size, size)
        rates: dict[str, list[float]] = {label: [] for label in built}
        for round_index in range(rounds):  # round-robin: the machine's load falls on every model alike
            for label, model in built.items():
                rates[label].append(throughput(lambda m=model, x=images: m(x), batch_size,
                                               warmup if round_index == 0 else 0, iters, torch.device("cpu")))
                print(f"  {size} round {round_index + 1} {label}: {rates[label][-1]:.3g} img/s", file=sys.stderr,
                      flush=True)
        paper = GLSIM_THROUGHPUT[size]
        for label, key, _, _ in models:
            # Each round's ratio to the ViT of the same round: the load moves between rounds.
            ratios = [rate / vit for rate, vit in zip(rates[label], rates["ViT-B/16"], strict=True)]
            per_round = ", ".join(f"{rate:.3g}" for rate in rates[label])
            lines.append(f"| {label} | {size} | {per_round} | {statistics.median(rates[label]):.3g} "
                         f"| {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) | ~{paper[key]} "
                         f"| {paper[key] / paper['vit']:.2f} |")
        del built
    notes = [f"Before: {before}", f"After: {machine_line()}",
             f"Batch {batch_size}, {warmup} warm-up batches then {iters} timed batches per model per round, "
             f"{rounds} rounds, models interleaved round-robin, fp32, inference_mode."]
    if skipped:
        notes.append(f"Skipped (not registered in fgir.methods): {', '.join(skipped)}.")
    return "\n".join([*notes, "", *lines])


# --- ILA Table 1 -----------------------------------------------------------------------------------

ILA_MODELS = [  # (label, paper key (method, setting), recipe method, overrides)
    ("ViT frozen + linear", ("linear", "frozen"), "linear", []),
    ("MPN-COV head", ("mpncov", "frozen"), "mpncov", []),
    ("IFA head (fgir: full fine-tuning)", ("vit_ifa", "frozen"), "linear", ["model.method=vit_ifa"]),  # no frozen key
    ("TransFG frozen", ("transfg", "frozen"), "transfg", ["model.transfg.frozen=true"]),
    ("FFVT frozen", ("ffvt", "frozen"), "ffvt", ["model.ffvt.frozen=true"]),
    ("CAL", ("cal", "frozen"), "cal", []),
    ("RAMS-Trans", ("ramstrans", "frozen"), "ramstrans", []),
    ("GLSim (fgir: full fine-tuning)", ("glsim", "frozen"), "glsim", []),
    ("VQT", ("vqt", "frozen"), "vqt", []),
    ("VPT-Shallow", ("vpt_shallow", "frozen"), "vpt_shallow", []),
    ("VPT-Deep", ("vpt_deep", "frozen"), "vpt_deep", []),
    ("ConvPass", ("convpass", "frozen"), "convpass", []),
    ("Adapter (ADPT)", ("adapter", "frozen"), "adapter", []),
    ("TransFG* full", ("transfg", "full"), "transfg", []),
    ("SIM-Trans* full", ("simtrans", "full"), "simtrans", []),
    ("ILA+", ("ila_plus", "frozen"), "ila_plus", []),
    ("ILA++", ("ila_pp", "frozen"), "ila_pp", []),
]


def ila_table() -> str:
    models, skipped = registered(ILA_MODELS, lambda entry: entry[2] if "model.method=vit_ifa" not in entry[3]
                                 else "vit_ifa")
    lines = ["| method | paper TTP (M) | fgir TTP (M) | fgir / paper | fgir with a frozen backbone (M) "
             "| GFLOPs/img | GMACs/img |", "|---|---|---|---|---|---|---|"]
    for label, paper_key, method, overrides in models:
        trainable = outside = 0
        for dataset in ILA_DATASETS:
            config = load_config([f"{dataset}/{method}_448"], [*overrides, "model.pretrained=false"])
            model = meta_model(config.model, config.data.num_classes, config.data.image_size)
            trainable += sum(p.numel() for p in model.parameters() if p.requires_grad)
            outside += sum(p.numel() for n, p in model.named_parameters() if not n.startswith("backbone."))
            if dataset == ILA_DATASETS[0]:  # on the CPU: not every method's forward runs on the meta device
                torch.manual_seed(0)
                real = build_model(config.model, config.data.num_classes, config.data.image_size, pretrained=False)
                flops = count_flops(real, config.data.image_size, torch.device("cpu"))
                del real
        paper = ILA_TTP[paper_key]
        print(f"  {label}: {trainable / 1e6:.2f} M, {flops / 1e9:.1f} GFLOPs", file=sys.stderr, flush=True)
        # Where fgir has no frozen setting, what a frozen backbone would leave: the modules outside it.
        frozen = f"{outside / 1e6:.2f}" if "full fine-tuning" in label else "-"
        lines.append(f"| {label} | {paper} | {trainable / 1e6:.2f} | {trainable / 1e6 / paper:.2f}x "
                     f"| {frozen} | {flops / 1e9:.2f} | {flops / 2e9:.2f} |")
    note = [f"Class counts: {', '.join(ILA_DATASETS)} as fgir's dataset recipes give them; GFLOPs and GMACs of "
            f"one {ILA_DATASETS[0]} image at 448 px; parameters counted on the meta device."]
    if skipped:
        note.append(f"Skipped (not registered in fgir.methods): {', '.join(skipped)}.")
    return "\n".join([*note, "", *lines])


# --- output ----------------------------------------------------------------------------------------

def write_section(path: Path, name: str, table: str) -> None:
    """Replace what lies between the file's markers for `name` by `table`."""
    text = path.read_text()
    start, end = f"<!-- cost_tables:{name} -->", f"<!-- /cost_tables:{name} -->"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"{path} has no '{start}' ... '{end}' section to write the {name} table into")
    path.write_text(pattern.sub(lambda _: f"{start}\n{table}\n{end}", text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=("selectors", "throughput", "ila"))
    parser.add_argument("--write", type=Path, help="markdown file with the table's section markers")
    parser.add_argument("--max-gflops", type=float, default=2000.0, help="selectors: time no call costlier than this")
    parser.add_argument("--max-input-gb", type=float, default=2.0, help="selectors: time no map larger than this")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448], help="throughput: image sizes")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="throughput: interleaved rounds")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's); one thread keeps small "
                                                     "ops steady on a machine busier than its cores")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.table == "selectors":
        table = selectors_table(args.max_gflops, args.max_input_gb, args.iters)
    elif args.table == "throughput":
        table = throughput_table(args.sizes, args.batch_size, args.warmup, args.iters, args.rounds)
    else:
        table = ila_table()
    print(table)
    if args.write:
        write_section(args.write, args.table, table)


if __name__ == "__main__":
    main()
