"""GLSim against the plain ViT on the built-in synthetic set, over several seeds, with the same
budget (recipes synthetic/{vit,glsim}): test top-1 per seed, mean and spread, and how often
GLSim's box contains the planted badge against a same-size box placed at random.

    .venv/bin/python benchmarks/glsim_vs_vit.py --seeds 1 2 3 --out runs/glsim-vs-vit

Each run is an ordinary `fgir train` run under --out; finished runs are reused when restarted.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from fgir.config import load_config
from fgir.data import build_dataset
from fgir.engine.checkpoint import restore_model
from fgir.engine.trainer import train
from fgir.fileio import atomic_write_text
from fgir.tools.localization import box_hit_rate

RECIPES = {"vit": "synthetic/vit", "glsim": "synthetic/glsim"}


def run(method: str, seed: int, out: Path) -> dict:
    run_dir = out / f"{method}-seed{seed}"
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    config = load_config(RECIPES[method], [f"train.seed={seed}", f"train.output_dir={out}",
                                           f"train.run_name={run_dir.name}"])
    result = train(config, progress=False)
    summary = {"method": method, "seed": seed, "test_top1": result.test_metrics["top1"]}
    if method == "glsim":
        model, checkpoint = restore_model(result.checkpoint)
        dataset = build_dataset(checkpoint.config.data, "test", transform=None)
        summary.update(box_hit_rate(model, dataset, checkpoint.config.data))
    atomic_write_text(summary_path, json.dumps(summary, indent=1))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", default="runs/glsim-vs-vit")
    args = parser.parse_args()
    out = Path(args.out)
    rows = [run(method, seed, out) for seed in args.seeds for method in RECIPES]
    print("| method | seed | test top-1 | box hit rate | chance hit rate | mean IoU |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        extra = [f"{100 * row[k]:.1f}%" for k in ("hit_rate", "chance_hit_rate")] + [f"{row['mean_iou']:.2f}"] \
            if "hit_rate" in row else ["-", "-", "-"]
        print(f"| {row['method']} | {row['seed']} | {row['test_top1']:.1f}% | " + " | ".join(extra) + " |")
    for method in RECIPES:
        top1 = [row["test_top1"] for row in rows if row["method"] == method]
        spread = statistics.stdev(top1) if len(top1) > 1 else 0.0
        print(f"{method}: test top-1 {statistics.mean(top1):.2f} +- {spread:.2f} over seeds {args.seeds}")
    hits = [row for row in rows if "hit_rate" in row]
    if hits:
        print(f"glsim: box hit rate {100 * statistics.mean(r['hit_rate'] for r in hits):.1f}% vs chance "
              f"{100 * statistics.mean(r['chance_hit_rate'] for r in hits):.1f}%")


if __name__ == "__main__":
    main()
