"""`fgir <verb>`: a thin layer over the library. Every verb parses its arguments, builds a config
and calls one library function; anything it does is reachable from Python."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

import fgir
from fgir.config import ConfigError, load_config
from fgir.errors import FgirError

USAGE_OVERRIDES = "config overrides as dotted key=value pairs, e.g. train.lr=0.01 data.image_size=448"
USAGE_SOURCES = ("recipe names (e.g. cub/glsim_448; fgir recipes lists them) or YAML files, later ones winning, "
                 f"then {USAGE_OVERRIDES}")
COMPILE_HELP = ("torch.compile the model with its weights frozen into the graph (inductor; falls back to "
                "eager with a warning); the first batch of each size compiles")


def _split_sources_and_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    """Config sources (recipe names, YAML files) first, then the key=value overrides."""
    count = next((i for i, item in enumerate(items) if "=" in item and not os.path.isfile(item)), len(items))
    sources, overrides = items[:count], items[count:]
    misplaced = [item for item in overrides if "=" not in item]
    if misplaced:
        raise ConfigError(f"'{misplaced[0]}' comes after the key=value overrides: give recipes and files first")
    return sources, overrides


def _split_seeds(values: list[str]) -> tuple[list[int], list[str]]:
    """`--seeds 1 10 100 train.epochs=3`: the leading integers are the seeds, the rest joins the
    recipe and overrides (argparse hands the whole tail to the option)."""
    count = next((i for i, item in enumerate(values) if not item.lstrip("-").isdigit()), len(values))
    if count == 0:
        raise ConfigError(f"--seeds takes whole numbers, e.g. --seeds 1 10 100; got '{values[0]}'")
    return [int(item) for item in values[:count]], values[count:]


def cmd_train_seeds(args: argparse.Namespace) -> None:
    from fgir.tools.model_card import write_model_card
    from fgir.tools.seeds import train_seeds

    if args.stop_after_epochs:
        raise ConfigError("--stop-after-epochs does not apply to --seeds: stop the command and run it again "
                          "to resume the seed that stopped")
    seeds, rest = _split_seeds(args.seeds)
    config = load_config(*_split_sources_and_overrides(args.items + rest))
    result = train_seeds(config, seeds, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    for run_dir in result.run_dirs:
        write_model_card(run_dir)  # each card names its seed among the others, with their mean
    print((result.seeds_dir / "seeds_summary.md").read_text(), end="")
    print(f"summary:       {result.seeds_dir / 'seeds_summary.json'}")


def cmd_train(args: argparse.Namespace) -> None:
    from fgir.engine.trainer import train

    if args.seeds:
        return cmd_train_seeds(args)
    sources, overrides = _split_sources_and_overrides(args.items)
    config = load_config(sources, overrides)
    if not sources and config.train.resume:
        from fgir.engine.resume_config import load_run_config

        config = load_run_config(config.train.resume, overrides)  # the run's own config, overrides on top
    result = train(config, progress=not args.no_progress, stop_after_epochs=args.stop_after_epochs)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun, rank 0 speaks for the run
    if result.test_metrics is not None:
        from fgir.tools.model_card import write_model_card

        write_model_card(result.run_dir)  # README.md: what `fgir hub push` publishes
    print(f"run directory: {result.run_dir}")
    print(f"checkpoint:    {result.checkpoint}")
    print(f"predict with:  fgir predict {result.checkpoint} <image or folder>")


def cmd_eval(args: argparse.Namespace) -> None:
    from fgir.tools.eval_report import evaluate_checkpoint, format_report

    report = evaluate_checkpoint(args.checkpoint, split=args.split, data_overrides=args.overrides,
                                 out_dir=args.out, device=args.device, precision=args.precision,
                                 batch_size=args.batch_size, progress=not args.no_progress, compile=args.compile,
                                 weights=args.weights)
    print(json.dumps(report, indent=1) if args.json else format_report(report))


def cmd_calibrate(args: argparse.Namespace) -> None:
    from fgir.tools.calibration import calibrate_checkpoint, format_calibration

    result = calibrate_checkpoint(args.checkpoint, split=args.split, data_overrides=args.overrides,
                                  device=args.device, precision=args.precision, batch_size=args.batch_size,
                                  progress=not args.no_progress, weights=args.weights)
    print(json.dumps(result, indent=1) if args.json else format_calibration(result))


def cmd_predict(args: argparse.Namespace) -> int:
    from fgir.tools.predictor import Predictor, format_predictions

    if args.onnx:
        from fgir.tools.onnx_predictor import onnx_predictor

        predictor = onnx_predictor(args.checkpoint, batch_size=args.batch_size, unknown_below=args.unknown_below)
    else:
        predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device, batch_size=args.batch_size,
                                              unknown_below=args.unknown_below, compile=args.compile,
                                              weights=args.weights)
    predictions = predictor.predict(args.images, topk=args.topk, on_error="skip")
    print(format_predictions(predictions, as_json=args.json))
    unreadable = [p.error for p in predictions if p.error is not None]
    for message in unreadable:
        print(f"fgir predict: error: {message}", file=sys.stderr)
    return 1 if unreadable else 0


def cmd_explain(args: argparse.Namespace) -> None:
    from fgir.tools.explain import explain_images

    for path in explain_images(args.checkpoint, args.images, args.out, device=args.device, weights=args.weights):
        print(path)


def cmd_serve(args: argparse.Namespace) -> None:
    from fgir.app.server import serve

    serve(args.checkpoint, host=args.host, port=args.port, share=args.share, device=args.device,
          unknown_below=args.unknown_below, weights=args.weights, concurrency=args.concurrency, onnx=args.onnx)


def cmd_bench(args: argparse.Namespace) -> None:
    from fgir.tools.bench import benchmark_target

    sources, overrides = _split_sources_and_overrides([args.target, *args.overrides])
    if not sources:
        raise ConfigError(f"'{args.target}' is an override; give a checkpoint or a recipe first")
    result = benchmark_target(sources, overrides, device=args.device, batch_size=args.batch_size,
                              precision=args.precision, warmup=args.warmup, iters=args.iters,
                              compile=args.compile, weights=args.weights)
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
    print(f"dataset config: {prepared.config_path} (give it after a recipe to train on this copy: "
          f"fgir train {args.name}/vit {prepared.config_path})")


def cmd_data_check(args: argparse.Namespace) -> int:
    from fgir.data.check import check_dataset

    config = load_config(*_split_sources_and_overrides(args.items))
    report = check_dataset(config.data, splits=args.splits or ("train", "val", "test"),
                           open_images=args.images == "decode", progress=not args.no_progress)
    print(json.dumps(report.to_dict(), indent=1) if args.json else report.format())
    return 0 if report.ok else 1


def cmd_data_cache(args: argparse.Namespace) -> int:
    from fgir.data.cache import cache_dataset

    config = load_config(*_split_sources_and_overrides(args.items))
    result = cache_dataset(config.data, args.out, short_side=args.short_side, workers=args.workers,
                           progress=not args.no_progress)
    print(f"cached into {result.out_dir}: {result.written} written, {result.up_to_date} already up to date, "
          f"{len(result.failed)} unreadable")
    for message in result.failed:
        print(f"  {message}", file=sys.stderr)
    print(f"dataset config: {result.config_path} (give it after a recipe to read the cached images: "
          f"fgir train <recipe> {result.config_path})")
    return 1 if result.failed else 0


def cmd_sweep(args: argparse.Namespace) -> None:
    from fgir.tools.sweep import DEFAULT_LRS, sweep_lr

    config = load_config(*_split_sources_and_overrides(args.items))
    result = sweep_lr(config, args.lrs or DEFAULT_LRS, sweep_name=args.name,
                      train_val_split=args.train_val_split, progress=not args.no_progress,
                      splits=tuple(args.selection_splits) if args.selection_splits else None)
    print(f"best lr {result.best_lr:g}: test top-1 {result.test_metrics['top1']:.2f}%")
    print(f"summary: {result.sweep_dir / 'sweep.json'}")


def cmd_analyze_cka(args: argparse.Namespace) -> None:
    from fgir.tools.cka import analyze_cka

    _, path = analyze_cka(args.sources, args.images, args.out, args.features, args.kernel, args.batch_size,
                          args.device, args.overrides, weights=args.weights)
    print(path)


def cmd_analyze_tradeoff(args: argparse.Namespace) -> None:
    from fgir.tools.tradeoff import tradeoff_plot

    costs, path = tradeoff_plot(args.runs, args.out)
    for cost in costs:
        print(f"{cost.run}: {cost.method}, top-1 {cost.test_top1:.2f}%, {cost.gflops_per_image:.2f} GFLOPs "
              f"({cost.gmacs_per_image:.2f} GMACs), "
              f"{cost.trainable_params:,} trainable")
    print(path)


def cmd_results(args: argparse.Namespace) -> None:
    from fgir.fileio import atomic_write_text
    from fgir.tools.results import format_paper_tables, format_results, result_rows

    if not args.runs and not args.paper:
        raise FgirError("give run directories to compare, or --paper for the published tables")
    text = format_paper_tables() if args.paper else format_results(result_rows(args.runs), markdown=args.markdown)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    print(text)


def cmd_convert_merge_lora(args: argparse.Namespace) -> None:
    from fgir.tools.merge_lora import save_merged_lora

    print(save_merged_lora(args.checkpoint, args.out, weights=args.weights))


def cmd_convert_glsim(args: argparse.Namespace) -> None:
    from fgir.tools.convert_glsim import convert_glsim_reference

    _report_converted(convert_glsim_reference(args.src, args.out, num_classes=args.num_classes,
                                              class_names=args.class_names))


def cmd_convert_ila(args: argparse.Namespace) -> None:
    from fgir.tools.convert_ila import convert_ila_reference

    _report_converted(convert_ila_reference(args.src, args.out, num_classes=args.num_classes,
                                            class_names=args.class_names))


def _report_converted(out: os.PathLike) -> None:
    print(f"checkpoint:   {out}")
    print(f"predict with: fgir predict {out} <image or folder>")


def cmd_export_onnx(args: argparse.Namespace) -> None:
    from fgir.tools.onnx_export import export_onnx

    print(export_onnx(args.checkpoint, args.out, weights=args.weights).format())
    print(f"predict with: fgir predict --onnx {args.out} <image or folder>")


def cmd_hub_push(args: argparse.Namespace) -> None:
    from fgir.tools.hub_push import push_run

    result = push_run(args.run, args.repo_id, private=args.private, revision=args.revision, token=args.token,
                      include_last=args.last)
    print(f"pushed {len(result.files)} files to {result.repo_id}: {result.commit_url}")
    print(f"predict with: fgir predict hf-hub:{result.repo_id} <image or folder>")


def _add_onnx_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--onnx", action="store_true",
                   help="CHECKPOINT is an .onnx file from fgir export onnx: run it on onnxruntime (CPU; needs "
                        "the export extra); --device, --compile and --weights do not apply")


def _add_sources_argument(p: argparse.ArgumentParser, extra_help: str = "") -> None:
    """Recipe names and YAML files, then key=value overrides, into `items` (see main)."""
    p.add_argument("items", nargs="*", metavar="CONFIG ... [KEY=VALUE ...]", help=USAGE_SOURCES + extra_help)


def _add_release_arguments(p: argparse.ArgumentParser, command: Callable[[argparse.Namespace], None]) -> None:
    p.add_argument("--num-classes", type=int, help="check the head has this many classes")
    p.add_argument("--class-names", help="class_id,class_name CSV (default: 0..C-1)")
    p.set_defaults(func=command)


def _add_weights_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", metavar="PATH",
                   help="the pretrained backbone weights (file or folder) of an adapter-only checkpoint (ILA, "
                        "PEFT), if not where it was trained; their SHA-256 must match. A full checkpoint holds "
                        "its backbone and ignores this")


def cmd_config_show(args: argparse.Namespace) -> None:
    from fgir.config_inspect import config_with_origins, format_with_origins

    print(format_with_origins(*config_with_origins(*_split_sources_and_overrides(args.items))))


def cmd_recipes(args: argparse.Namespace) -> None:
    from fgir.recipes import describe

    print(describe())


def cmd_config_keys(args: argparse.Namespace) -> None:
    from fgir.config_inspect import config_help, format_keys

    print(format_keys(config_help(), prefix=args.prefix or ""))


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse's message names the option)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_split_scoring_arguments(p: argparse.ArgumentParser, split: str, split_help: str) -> None:
    """What every command that runs a checkpoint over a dataset split (fgir.tools.scoring) takes."""
    p.add_argument("checkpoint", help="a checkpoint file or a run directory (its best checkpoint)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="data.* overrides, e.g. data.root=/data/cub")
    p.add_argument("--split", default=split, choices=("train", "val", "test"), help=split_help)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=positive_int, help="default: the checkpoint's data.eval_batch_size")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_weights_argument(p)


def _version() -> str:
    try:
        return version("fgir")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return fgir.__version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fgir", description="Fine-grained image recognition with vision transformers.")
    parser.add_argument("--version", action="version", version=f"fgir {_version()}")
    verbs = parser.add_subparsers(dest="verb", required=True)

    p = verbs.add_parser("train", help="train a model from a recipe (e.g. fgir train cub/glsim), or continue a "
                                       "run: fgir train train.resume=<run dir> [KEY=VALUE ...]")
    _add_sources_argument(p, "; with train.resume=<run dir> and no recipe, the run's own config.yaml is the recipe")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs stay)")
    p.add_argument("--stop-after-epochs", type=positive_int, metavar="N",
                   help="end this call after N epochs (e.g. a job's time limit); continue later with train.resume=<run dir>")
    p.add_argument("--seeds", nargs="+", metavar="SEED",
                   help="one run per seed (e.g. 1 10 100, the papers' seeds) under train.output_dir/<train.run_name>/"
                        "seed_N, then the mean +- std of their test metrics (seeds_summary.json, .md); run again "
                        "to skip the seeds done and resume the one that stopped")
    p.set_defaults(func=cmd_train, trailing="items")

    p = verbs.add_parser("eval", help="score a checkpoint on a dataset split: metrics, predictions, confusion matrix")
    _add_split_scoring_arguments(p, split="test", split_help="the split to score (default: test)")
    p.add_argument("--out", help="output folder (default: <run>/eval-<split>)")
    p.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    p.add_argument("--json", action="store_true", help="print metrics.json instead of a summary")
    p.set_defaults(func=cmd_eval, trailing="overrides")

    p = verbs.add_parser("predict", help="top-k classes for images or folders of images")
    p.add_argument("checkpoint", help="a checkpoint file or a run directory")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    p.add_argument("--unknown-below", type=float, metavar="P",
                   help="answer 'unknown' when the top class's probability (after the checkpoint's fitted "
                        "temperature, see fgir calibrate) is below P, e.g. 0.5; the top-k list is kept")
    _add_weights_argument(p)
    _add_onnx_argument(p)
    p.set_defaults(func=cmd_predict, trailing="images")

    p = verbs.add_parser("explain", help="GLSim figures: similarity heat map, box, crop, attention maps")
    p.add_argument("checkpoint", help="a checkpoint file or a run directory")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--out", default="explanations", help="output folder for <stem>_explain.png files")
    p.add_argument("--device", default="auto")
    _add_weights_argument(p)
    p.set_defaults(func=cmd_explain, trailing="images")

    p = verbs.add_parser("calibrate", help="fit a temperature on the validation split and store it in the "
                                           "checkpoint (predict, eval and serve then use it)")
    _add_split_scoring_arguments(p, split="val", split_help="held-out images to fit on (default: val)")
    p.add_argument("--json", action="store_true", help="print what was stored as JSON instead of a summary")
    p.set_defaults(func=cmd_calibrate, trailing="overrides")

    p = verbs.add_parser("serve", help="web demo: upload a picture, see the top-5 classes and where the model looked")
    p.add_argument("checkpoint", help="a checkpoint file or a run directory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also open a public Gradio link (off by default)")
    p.add_argument("--device", default="auto")
    p.add_argument("--unknown-below", type=float, metavar="P",
                   help="answer 'unknown' when the top class's probability is below P, as in fgir predict")
    _add_weights_argument(p)
    p.add_argument("--concurrency", type=int, default=1, metavar="N",
                   help="pictures answered at once, the others wait their turn (default 1: one inference "
                        "already uses every core)")
    _add_onnx_argument(p)
    p.set_defaults(func=cmd_serve)

    p = verbs.add_parser("bench", help="parameters, FLOPs, throughput, latency and memory of a model")
    p.add_argument("target", help="a checkpoint, or a recipe name (e.g. cub/glsim) or YAML file")
    p.add_argument("overrides", nargs="*", metavar="[CONFIG ...] KEY=VALUE",
                   help=f"more recipe names or YAML files after a recipe, later ones winning, then {USAGE_OVERRIDES}")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    p.add_argument("--iters", type=positive_int, default=5, help="timed iterations")
    p.add_argument("--compile", action="store_true", help=COMPILE_HELP + "; the warm-up iterations pay for it")
    p.add_argument("--out", help="also write the JSON here")
    _add_weights_argument(p)
    p.set_defaults(func=cmd_bench, trailing="overrides")

    p = verbs.add_parser("data", help="dataset tools")
    data_verbs = p.add_subparsers(dest="data_verb", required=True)
    p = data_verbs.add_parser("prepare", help="turn an official dataset download into the split CSVs")
    p.add_argument("name", help="dataset: cub, nabirds, dogs, cars, aircraft, pets, flowers, food, inat17, vegfru, "
                                "dafre_faces, dafb, moeimouto, cotton, soylocal, soyglobal, soygene, soyageing, "
                                "soyageing_r1 (r3, r4, r5, r6)")
    p.add_argument("root", help="the downloaded dataset folder, e.g. ~/data/CUB_200_2011")
    p.add_argument("--out", help="where to write the CSVs and dataset.yaml (default: the dataset folder)")
    p.add_argument("--allow-count-mismatch", action="store_true",
                   help="prepare even if image/class counts differ from the official ones (a subset)")
    p.set_defaults(func=cmd_data_prepare)
    p = data_verbs.add_parser("check", help="list every problem of a dataset: bad rows, missing or unreadable "
                                            "images, images shared between splits (exit status 1 if any)")
    _add_sources_argument(p)
    p.add_argument("--split", dest="splits", action="append", choices=("train", "val", "test"),
                   help="check only this split (repeatable; default: every configured split)")
    p.add_argument("--images", choices=("decode", "exists"), default="decode",
                   help="decode every image (default) or only check that the files exist")
    p.add_argument("--json", action="store_true", help="the report as JSON instead of text")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data_check, trailing="items")
    p = data_verbs.add_parser("cache", help="a pre-resized copy of a dataset's images (short side = the resize "
                                            "size), for datasets whose photos are far larger than training needs")
    _add_sources_argument(p)
    p.add_argument("--out", required=True, help="the cache folder (a dataset.yaml to include is written there)")
    p.add_argument("--short-side", type=positive_int, help="short side of the cached images (default: the recipe's resize size)")
    p.add_argument("--workers", type=positive_int, help="decoding processes (default: one per core)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data_cache, trailing="items")

    p = verbs.add_parser("sweep", help="learning-rate sweep: one run per lr on train, best val lr retrained on "
                                       "train_val and scored on test")
    _add_sources_argument(p)
    p.add_argument("--lrs", type=float, nargs="+", help="learning rates (default: 0.3 0.1 0.03 0.01 0.003)")
    p.add_argument("--name", help="sweep folder under train.output_dir (default: dataset-method-sweep-time)")
    p.add_argument("--train-val-split", default="train_val.csv", help="the split the chosen lr is retrained on")
    p.add_argument("--selection-splits", nargs=2, metavar=("TRAIN", "VAL"),
                   help="the splits each lr trains and is scored on (default: data.train and data.val, or "
                        "train.csv and val.csv for a recipe that trains on train_val)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_sweep, trailing="items")

    p = verbs.add_parser("recipes", help="the recipe names fgir ships: <dataset>/<method>[_<variant>...]")
    p.set_defaults(func=cmd_recipes)

    p = verbs.add_parser("analyze", help="analysis tools")
    analyze_verbs = p.add_subparsers(dest="analyze_verb", required=True)
    p = analyze_verbs.add_parser("cka", help="layer-to-layer CKA heat map of one or more models (e.g. a frozen ViT "
                                             "vs ILA)")
    p.add_argument("sources", nargs="+", help="checkpoints, run directories, recipe names or YAML recipes (drawn "
                                              "side by side)")
    p.add_argument("--images", nargs="+", required=True, help="image files or folders")
    p.add_argument("--features", choices=("attention", "cls", "mean"), default="attention",
                   help="what is compared per layer (default: attention maps)")
    p.add_argument("--kernel", choices=("linear", "rbf"), default="linear")
    p.add_argument("--out", default="cka.png", help="the heat map (a CSV is written beside it)")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="an override for the recipes among the sources (repeatable)")
    _add_weights_argument(p)
    p.set_defaults(func=cmd_analyze_cka)
    p = analyze_verbs.add_parser("tradeoff", help="test top-1 vs GFLOPs of finished runs, bubble area = trainable "
                                                  "parameters (the ILA paper's PEFT figure)")
    p.add_argument("runs", nargs="+", help="run directories with test_metrics.json")
    p.add_argument("--out", default="tradeoff.png", help="the plot (a CSV is written beside it)")
    p.set_defaults(func=cmd_analyze_tradeoff)

    p = verbs.add_parser("results", help="finished runs beside the papers' numbers: mean +- std over seeds, the "
                                         "published top-1 and the difference")
    p.add_argument("runs", nargs="*", help="run directories with test_metrics.json")
    p.add_argument("--markdown", action="store_true", help="a markdown table instead of aligned text")
    p.add_argument("--paper", action="store_true", help="only the published numbers fgir compares against (markdown)")
    p.add_argument("--out", help="also write the table to this file")
    p.set_defaults(func=cmd_results)

    p = verbs.add_parser("convert", help="convert foreign checkpoints to fgir checkpoints")
    convert_verbs = p.add_subparsers(dest="convert_verb", required=True)
    p = convert_verbs.add_parser("glsim-reference", help="a GLSim paper release (.pth) -> fgir checkpoint")
    p.add_argument("src", help="e.g. dafb_vit_b16_16_2.pth")
    p.add_argument("--out", help="output .safetensors (default: next to the input)")
    _add_release_arguments(p, cmd_convert_glsim)
    p = convert_verbs.add_parser("ila-reference", help="an ILA paper release (.pth) -> fgir ila / ila_plus / "
                                                       "ila_pp checkpoint")
    p.add_argument("src", help="e.g. soyageing_vit_b16_ila_dso_cls_adapter_fz_1.pth")
    p.add_argument("out", nargs="?", help="output .safetensors (default: next to the input)")
    _add_release_arguments(p, cmd_convert_ila)
    p = convert_verbs.add_parser("merge-lora", help="a LoRA checkpoint -> a full vit checkpoint with the LoRA updates "
                                                    "merged (needs neither peft nor the pretrained weights to load)")
    p.add_argument("checkpoint", help="a LoRA checkpoint file or run directory")
    p.add_argument("out", help="output .safetensors")
    _add_weights_argument(p)
    p.set_defaults(func=cmd_convert_merge_lora)

    p = verbs.add_parser("export", help="export a checkpoint for serving without PyTorch")
    export_verbs = p.add_subparsers(dest="export_verb", required=True)
    p = export_verbs.add_parser("onnx", help="a checkpoint -> an ONNX file with a dynamic batch size, checked "
                                             "against PyTorch on onnxruntime before it is kept")
    p.add_argument("checkpoint", help="a checkpoint file or a run directory")
    p.add_argument("out", help="output .onnx")
    _add_weights_argument(p)
    p.set_defaults(func=cmd_export_onnx)

    p = verbs.add_parser("hub", help="share runs on the Hugging Face Hub (pull: hf-hub:ORG/NAME wherever a "
                                     "checkpoint is taken)")
    hub_verbs = p.add_subparsers(dest="hub_verb", required=True)
    p = hub_verbs.add_parser("push", help="upload a finished run: its checkpoint, config, metrics, plots, model "
                                          "card and, for an adapter-only checkpoint, its backbone file")
    p.add_argument("run", help="the run directory")
    p.add_argument("repo_id", metavar="REPO_ID", help="ORG/NAME; created if it does not exist")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--revision", help="the branch to commit to (created from main if new; default: main)")
    p.add_argument("--token", help="a Hugging Face token with write access (default: HF_TOKEN or the saved login)")
    p.add_argument("--last", action="store_true", help="also upload checkpoints/last.safetensors (resumable)")
    p.set_defaults(func=cmd_hub_push)

    p = verbs.add_parser("config", help="the resolved configuration and the schema's keys")
    config_verbs = p.add_subparsers(dest="config_verb", required=True)
    p = config_verbs.add_parser("show", help="the config a recipe and overrides resolve to, with the origin of "
                                             "each value (default, file, command line)")
    _add_sources_argument(p)
    p.set_defaults(func=cmd_config_show, trailing="items")
    p = config_verbs.add_parser("keys", help="every config key with its type, default and meaning")
    p.add_argument("prefix", nargs="?", metavar="KEY", help="only this key or section, e.g. model.peft")
    p.set_defaults(func=cmd_config_keys)
    return parser


# A path the user gave that is missing, of the wrong kind or not accessible: their error, not fgir's.
PATH_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


def _one_line(err: Exception) -> str:
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"  # not Python's "[Errno 20] Not a directory: '...'"
    return str(err)


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
    except (FgirError, *PATH_ERRORS) as err:
        print(f"fgir {args.verb}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
