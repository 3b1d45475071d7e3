"""The model card of a finished run: `README.md` with Hugging Face model-card front matter.

Everything in it is read from the run folder (config.yaml, test_metrics.json, trainable_params.json
and the checkpoint's metadata), so it can be written again at any time, e.g. by `fgir hub push`
with the repository name filled in.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fgir.config import Config, ModelConfig, from_dict
from fgir.engine.checkpoint import (
    BackboneIdentity,
    read_backbone_identity,
    read_metadata,
    resolve_checkpoint_path,
)
from fgir.errors import FgirError
from fgir.fileio import atomic_write_text
from fgir.tools.results import SEEDS_SUMMARY, result_rows

CARD = "README.md"
METRIC_COLUMNS = (("top1", "top-1 %"), ("top5", "top-5 %"), ("mean_class_acc", "mean class acc. %"))
# What each model.method is, with the paper it comes from.
METHODS = {
    "vit": "ViT fine-tuning (the baseline of GLSim, arXiv 2407.12891, and ILA, arXiv 2409.11051)",
    "glsim": "GLSim: global-local similarity crops re-encoded by the same ViT (Rios et al., arXiv 2407.12891)",
    "ila": "ILA: down-sampling inter-layer adapters on a frozen ViT (Rios et al., arXiv 2409.11051)",
    "ila_plus": "ILA+: ILA with same-resolution inter-layer adapters (Rios et al., arXiv 2409.11051)",
    "ila_pp": "ILA++: ILA with parallel bottleneck adapters (Rios et al., arXiv 2409.11051)",
    "vit_ifa": "ViT with intermediate-features aggregation (Animesion, Rios et al., arXiv 2101.08674)",
    "cnn": "a timm CNN (the baselines of Animesion, arXiv 2101.08674)",
}
PEFT_BASELINE = "{} on a frozen ViT (a PEFT baseline of ILA, arXiv 2409.11051)"
PEFT_NAMES = {"linear": "linear probe", "adapter": "bottleneck adapters", "convpass": "ConvPass",
              "vpt_shallow": "VPT-shallow", "vpt_deep": "VPT-deep", "lora": "LoRA", "bitfit": "BitFit"}


class ModelCardError(FgirError):
    """A folder that is not a finished run; the message names the file that is missing."""


@dataclass(frozen=True)
class RunSummary:
    """What the card says, read from a run folder."""

    run_dir: Path
    config: Config
    checkpoint: Path  # the one the run scored test with
    epoch: int | None
    class_count: int
    scores: dict[str, dict[str, Any]]  # split -> metrics, from test_metrics.json
    trainable: dict[str, int] | None  # {"trainable": n, "total": n}
    backbone: BackboneIdentity | None  # set for an adapter-only checkpoint
    seeds: dict[str, Any] | None = None  # seeds_summary.json of `fgir train --seeds`, when the run is one of them


def read_run(run_dir: str | os.PathLike) -> RunSummary:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ModelCardError(f"{run_dir}: no such run folder")
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ModelCardError(f"{run_dir}: not a run folder (it has no config.yaml)")
    config = from_dict(yaml.safe_load(config_path.read_text()), origin=str(config_path))
    summary = _json(run_dir / "test_metrics.json") or {}
    checkpoint = _scored_checkpoint(run_dir, summary)
    trainable = _json(run_dir / "trainable_params.json")
    return RunSummary(
        run_dir=run_dir, config=config, checkpoint=checkpoint, epoch=summary.get("epoch"),
        class_count=len(json.loads(read_metadata(checkpoint)["class_names"])),
        scores={split: summary[split] for split in ("val", "test") if isinstance(summary.get(split), dict)},
        trainable=None if trainable is None else {key: trainable[key] for key in ("trainable", "total")},
        backbone=read_backbone_identity(checkpoint),
        seeds=_seeds_summary(run_dir),
    )


def _seeds_summary(run_dir: Path) -> dict[str, Any] | None:
    summary = _json(run_dir.parent / f"{SEEDS_SUMMARY}.json")
    if summary is None or run_dir.name not in summary.get("runs", []):
        return None
    return summary


def _scored_checkpoint(run_dir: Path, summary: dict[str, Any]) -> Path:
    """The checkpoint test was scored with (its name from test_metrics.json), else best, else last."""
    named = run_dir / "checkpoints" / Path(summary.get("checkpoint") or "best.safetensors").name
    if named.is_file():
        return named
    try:
        return resolve_checkpoint_path(run_dir)
    except FgirError:
        raise ModelCardError(f"{run_dir}: not a finished run (no checkpoints/best.safetensors or "
                             "checkpoints/last.safetensors)") from None


def _json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise ModelCardError(f"{path}: does not parse as JSON ({err})") from None


def model_card(run: RunSummary, repo_id: str | None = None, backbone_file: str | None = None) -> str:
    """The card's text. `repo_id`: the Hub repository it is published in (the usage lines then pull
    from there); `backbone_file`: where that repository holds the backbone of an adapter-only run."""
    config, model, data = run.config, run.config.model, run.config.data
    source = f"hf-hub:{repo_id}" if repo_id else str(run.run_dir)
    lines = [_front_matter(run), f"# {config.train.run_name or run.run_dir.name}", "",
             f"{_method(model.method)}, trained with `fgir` on {data.name} ({run.class_count} classes) at "
             f"{data.image_size} px; backbone {_backbone(model)}, seed {config.train.seed}.", "", "## Results", ""]
    lines += _scores_table(run) + _paper_line(run) + _seeds_line(run)
    if run.trainable:
        share = 100 * run.trainable["trainable"] / max(run.trainable["total"], 1)
        lines += ["", f"Trainable parameters: {run.trainable['trainable']:,} of {run.trainable['total']:,} "
                      f"({share:.2f}%)."]
    lines += ["", "## Use", "", "```bash", f"fgir predict {source} bird.jpg", "```", "", "```python",
              "import fgir", "", f'model = fgir.load("{source}")', 'model.predict("bird.jpg", topk=5)', "```"]
    if run.backbone is not None:
        lines += ["", "## Backbone", "", *_backbone_lines(run.backbone, backbone_file)]
    lines += ["", "## Reproduce", "", "With `config.yaml` from this run and the dataset on disk:", "", "```bash",
              f"fgir train config.yaml data.root=/path/to/{data.name} train.output_dir=runs"
              + (" model.weights=/path/to/backbone" if run.backbone and run.backbone.weights else ""), "```", ""]
    return "\n".join(lines)


def write_model_card(run_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                     repo_id: str | None = None, backbone_file: str | None = None) -> Path:
    """Write the card of `run_dir` atomically to `out` (default: the run's README.md)."""
    run = read_run(run_dir)
    path = Path(out) if out is not None else run.run_dir / CARD
    atomic_write_text(path, model_card(run, repo_id, backbone_file))
    return path


def _front_matter(run: RunSummary) -> str:
    model = run.config.model
    meta: dict[str, Any] = {
        "library_name": "fgir",
        "pipeline_tag": "image-classification",
        "tags": ["fgir", "image-classification", "fine-grained-image-recognition", "vision-transformer",
                 model.method, model.backbone.partition(".")[0]],
        "datasets": [run.config.data.name],
        "metrics": ["accuracy"],
    }
    if run.backbone is not None and run.backbone.weights is None:
        meta["base_model"] = f"timm/{model.backbone}"
    return f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n"


def _backbone(model: ModelConfig) -> str:
    args = f" with backbone_args {model.backbone_args}" if model.backbone_args else ""
    start = "" if model.pretrained else ", trained from random initialisation"
    return f"`{model.backbone}`{args}{start}"


def _method(method: str) -> str:
    if method in PEFT_NAMES:
        return PEFT_BASELINE.format(PEFT_NAMES[method])
    return METHODS.get(method, method)


def _scores_table(run: RunSummary) -> list[str]:
    if not run.scores:
        return ["Not scored yet (the run has no test_metrics.json)."]
    epoch = f", epoch {run.epoch}" if run.epoch is not None else ""
    rows = ["| split | images | " + " | ".join(title for _, title in METRIC_COLUMNS) + " |",
            "|---|---|" + "---|" * len(METRIC_COLUMNS)]
    for split, metrics in run.scores.items():
        values = " | ".join(_percent(metrics.get(key)) for key, _ in METRIC_COLUMNS)
        rows.append(f"| {split} | {metrics.get('num_samples', '')} | {values} |")
    return [*rows, "", f"Checkpoint `checkpoints/{run.checkpoint.name}`{epoch}."]


def _paper_line(run: RunSummary) -> list[str]:
    """The published top-1 for this dataset / method / backbone / size / setting (fgir results)."""
    if "test" not in run.scores or run.trainable is None:
        return []
    [row] = result_rows([run.run_dir])
    if row.paper is None:
        setting = "frozen backbone" if row.setting == "frozen" else "full fine-tuning"
        return ["", f"No published number for {row.dataset} / {row.method} / {row.image_size} px / {setting} in "
                    "the papers fgir reproduces."]
    about = "about " if row.paper.approximate else ""
    return ["", f"Published: test top-1 {about}{row.paper.top1:.2f}% ({row.paper.source}); this run "
                f"{row.difference:+.2f} points."]


def _seeds_line(run: RunSummary) -> list[str]:
    if run.seeds is None or "top1" not in run.seeds["test"]:
        return []
    top1, seeds = run.seeds["test"]["top1"], run.seeds["seeds"]
    return ["", f"One of {len(seeds)} runs of this recipe with seeds {', '.join(map(str, seeds))} "
                f"(`fgir train --seeds`): test top-1 {top1['mean']:.2f} +- {top1['std']:.2f} over them "
                f"(`../{SEEDS_SUMMARY}.md`)."]


def _percent(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else ""


def _backbone_lines(identity: BackboneIdentity, backbone_file: str | None) -> list[str]:
    head = (f"This checkpoint holds only the trainable weights; it runs on the frozen backbone "
            f"`{identity.model}` whose {identity.tensors} frozen tensors have SHA-256 `{identity.sha256}`.")
    if identity.weights is None:
        return [head, "", f"Those are timm's Hugging Face Hub weights of `{identity.model}`, downloaded when it "
                          "is loaded."]
    if backbone_file:
        return [head, "", f"This repository ships them as `{backbone_file}`; `fgir predict` and `fgir.load` on "
                          "it pull both."]
    return [head, "", f"It was trained on `{Path(identity.weights).name}`; give that file with `--weights PATH` "
                      "(`weights=PATH` in Python)."]
