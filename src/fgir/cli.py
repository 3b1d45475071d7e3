"""`fgir <verb>`: a thin layer over the library. Every verb parses its arguments, builds a config
and calls one library function; anything it does is reachable from Python."""

from __future__ import annotations

import argparse
import json
import sys

from fgir.config import load_config
from fgir.errors import FgirError

USAGE_OVERRIDES = "config overrides as dotted key=value pairs, e.g. train.lr=0.01 data.image_size=448"


def _split_config_and_overrides(items: list[str]) -> tuple[str | None, list[str]]:
    """The first item is a YAML file unless it looks like an override (key=value)."""
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return None, items


def cmd_train(args: argparse.Namespace) -> None:
    from fgir.engine.trainer import train

    path, overrides = _split_config_and_overrides(args.items)
    config = load_config(path, overrides)
    result = train(config, progress=not args.no_progress, stop_after_epochs=args.stop_after_epochs)
    print(f"run directory: {result.run_dir}")
    print(f"checkpoint:    {result.checkpoint}")
    print(f"predict with:  fgir predict {result.checkpoint} <image or folder>")


def cmd_eval(args: argparse.Namespace) -> None:
    from fgir.tools.eval_report import evaluate_checkpoint

    report = evaluate_checkpoint(args.checkpoint, split=args.split, data_overrides=args.overrides,
                                 out_dir=args.out, device=args.device, precision=args.precision,
                                 batch_size=args.batch_size, progress=not args.no_progress)
    print(json.dumps(report, indent=1))


def cmd_predict(args: argparse.Namespace) -> None:
    from fgir.tools.predictor import Predictor, format_predictions

    predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device, batch_size=args.batch_size)
    predictions = predictor.predict(args.images, topk=args.topk)
    print(format_predictions(predictions, as_json=args.json))


def cmd_explain(args: argparse.Namespace) -> None:
    from fgir.tools.explain import explain_images

    for path in explain_images(args.checkpoint, args.images, args.out, device=args.device):
        print(path)


def cmd_bench(args: argparse.Namespace) -> None:
    from fgir.tools.bench import benchmark_target

    result = benchmark_target(args.target, args.overrides, device=args.device, batch_size=args.batch_size,
                              precision=args.precision, warmup=args.warmup, iters=args.iters)
    text = json.dumps(result, indent=1)
    if args.out:
        from fgir.fileio import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    print(text)


def cmd_data_prepare(args: argparse.Namespace) -> None:
    from fgir.data.prepare import prepare_dataset

    prepared = prepare_dataset(args.name, args.root, args.out, check_counts=not args.allow_count_mismatch)
    counts = ", ".join(f"{split} {n}" for split, n in prepared.counts.items())
    print(f"prepared {args.name} into {prepared.out_dir}: {counts}")
    print(f"dataset config: {prepared.config_path} (include it from a recipe, or train with it directly)")


def cmd_data_check(args: argparse.Namespace) -> int:
    from fgir.data.check import check_dataset

    path, overrides = _split_config_and_overrides(args.items)
    config = load_config(path, overrides)
    report = check_dataset(config.data, splits=args.splits or ("train", "val", "test"),
                           open_images=args.images == "decode", progress=not args.no_progress)
    print(json.dumps(report.to_dict(), indent=1) if args.json else report.format())
    return 0 if report.ok else 1


def cmd_convert_glsim(args: argparse.Namespace) -> None:
    from fgir.tools.convert_glsim import convert_glsim_reference

    out = convert_glsim_reference(args.src, args.out, num_classes=args.num_classes, class_names=args.class_names)
    print(f"checkpoint:   {out}")
    print(f"predict with: fgir predict {out} <image or folder>")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fgir", description="Fine-grained image recognition with vision transformers.")
    verbs = parser.add_subparsers(dest="verb", required=True)

    p = verbs.add_parser("train", help="train a model from a YAML recipe")
    p.add_argument("items", nargs="*", metavar="CONFIG [KEY=VALUE ...]", help=f"a YAML recipe, then {USAGE_OVERRIDES}")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs stay)")
    p.add_argument("--stop-after-epochs", type=int, metavar="N",
                   help="end this call after N epochs (e.g. a job's time limit); continue later with train.resume=<run dir>")
    p.set_defaults(func=cmd_train, trailing="items")

    p = verbs.add_parser("eval", help="score a checkpoint on a dataset split: metrics, predictions, confusion matrix")
    p.add_argument("checkpoint", help="a checkpoint file or a run directory (its best checkpoint)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="data.* overrides, e.g. data.root=/data/cub")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--out", help="output folder (default: <run>/eval-<split>)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_eval, trailing="overrides")

    p = verbs.add_parser("predict", help="top-k classes for images or folders of images")
    p.add_argument("checkpoint", help="a checkpoint file or a run directory")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=cmd_predict, trailing="images")

    p = verbs.add_parser("explain", help="GLSim figures: similarity heat map, box, crop, attention maps")
    p.add_argument("checkpoint", help="a checkpoint file or a run directory")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--out", default="explanations", help="output folder for <stem>_explain.png files")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_explain, trailing="images")

    p = verbs.add_parser("bench", help="parameters, FLOPs, throughput, latency and memory of a model")
    p.add_argument("target", help="a YAML recipe or a checkpoint")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=USAGE_OVERRIDES)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    p.add_argument("--iters", type=int, default=5, help="timed iterations")
    p.add_argument("--out", help="also write the JSON here")
    p.set_defaults(func=cmd_bench, trailing="overrides")

    p = verbs.add_parser("data", help="dataset tools")
    data_verbs = p.add_subparsers(dest="data_verb", required=True)
    p = data_verbs.add_parser("prepare", help="turn an official dataset download into the split CSVs")
    p.add_argument("name", help="dataset: cub, nabirds, dogs, cars, aircraft, pets, flowers, food, inat17")
    p.add_argument("root", help="the downloaded dataset folder, e.g. ~/data/CUB_200_2011")
    p.add_argument("--out", help="where to write the CSVs and dataset.yaml (default: the dataset folder)")
    p.add_argument("--allow-count-mismatch", action="store_true",
                   help="prepare even if image/class counts differ from the official ones (a subset)")
    p.set_defaults(func=cmd_data_prepare)
    p = data_verbs.add_parser("check", help="list every problem of a dataset: bad rows, missing or unreadable "
                                            "images, images shared between splits (exit status 1 if any)")
    p.add_argument("items", nargs="*", metavar="CONFIG [KEY=VALUE ...]", help=f"a YAML recipe, then {USAGE_OVERRIDES}")
    p.add_argument("--split", dest="splits", action="append", choices=("train", "val", "test"),
                   help="check only this split (repeatable; default: every configured split)")
    p.add_argument("--images", choices=("decode", "exists"), default="decode",
                   help="decode every image (default) or only check that the files exist")
    p.add_argument("--json", action="store_true", help="the report as JSON instead of text")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data_check, trailing="items")

    p = verbs.add_parser("convert", help="convert foreign checkpoints to fgir checkpoints")
    convert_verbs = p.add_subparsers(dest="convert_verb", required=True)
    p = convert_verbs.add_parser("glsim-reference", help="a GLSim paper release (.pth) -> fgir checkpoint")
    p.add_argument("src", help="e.g. dafb_vit_b16_16_2.pth")
    p.add_argument("--out", help="output .safetensors (default: next to the input)")
    p.add_argument("--num-classes", type=int, help="check the head has this many classes")
    p.add_argument("--class-names", help="class_id,class_name CSV (default: 0..C-1)")
    p.set_defaults(func=cmd_convert_glsim)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops filling a positional list at the first option: positionals given after an
    # option (`fgir train x.yaml --no-progress train.lr=0.1`) arrive here and join that list.
    receiver = getattr(args, "trailing", None)
    if extra and (receiver is None or any(item.startswith("-") for item in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        setattr(args, receiver, getattr(args, receiver) + extra)
    try:
        return args.func(args) or 0
    except (FgirError, FileNotFoundError, FileExistsError) as err:
        print(f"fgir {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
