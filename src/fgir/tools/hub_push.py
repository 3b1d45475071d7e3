"""`fgir hub push RUN ORG/NAME`: publish a finished run on the Hugging Face Hub.

The repository mirrors the run folder, so that pulling it (`hf-hub:ORG/NAME`, see `fgir.hub`) gives
a run folder again: the checkpoint the run scored with, config.yaml, the metrics, the plots, the
model card as README.md, and `fgir_hub.json`. An adapter-only checkpoint trained on a local backbone
file ships that file under `backbone/`, so that pulling the run pulls both; one trained on timm's Hub
weights names them (model and SHA-256) instead. The endpoint is huggingface_hub's (`HF_ENDPOINT`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import huggingface_hub
from huggingface_hub import constants as hub_constants

from fgir.engine.checkpoint import BackboneIdentity
from fgir.errors import FgirError
from fgir.hub import HUB_ERRORS, MANIFEST, MANIFEST_FORMAT, PREFIX, HubError, failure_reason, parse_reference
from fgir.models.weights import weight_file
from fgir.tools.model_card import CARD, RunSummary, model_card, read_run

RUN_FILES = ("config.yaml", "metrics.json", "metrics.csv", "test_metrics.json", "trainable_params.json")
BACKBONE_DIR = "backbone"


class HubPushError(FgirError):
    """A push the Hub refused or could not be sent; the message names the repository."""


@dataclass(frozen=True)
class PushResult:
    repo_id: str
    commit_url: str
    files: list[str]  # paths in the repository, sorted


def staged_files(run: RunSummary, include_last: bool = False) -> dict[str, Path]:
    """Repository path -> local file, for everything of the run that is published (the card and the
    manifest are written apart)."""
    run_dir = run.run_dir
    files = {name: run_dir / name for name in RUN_FILES if (run_dir / name).is_file()}
    files[f"checkpoints/{run.checkpoint.name}"] = run.checkpoint
    last = run_dir / "checkpoints" / "last.safetensors"
    if include_last and last.is_file():
        files["checkpoints/last.safetensors"] = last
    files.update({plot.relative_to(run_dir).as_posix(): plot for plot in sorted(run_dir.rglob("*.png"))})
    if run.backbone is not None and run.backbone.weights is not None:
        backbone = weight_file(run.backbone.weights)  # missing: the user's error, named by weight_file
        files[f"{BACKBONE_DIR}/{backbone.name}"] = backbone
    return files


def manifest(run: RunSummary, files: dict[str, Path]) -> dict:
    """fgir_hub.json: the checkpoint's path and, for an adapter-only one, the backbone it needs."""
    entry: dict = {"format": MANIFEST_FORMAT, "checkpoint": f"checkpoints/{run.checkpoint.name}"}
    if run.backbone is not None:
        entry["backbone"] = _backbone_entry(run.backbone, files)
    return entry


def shipped_backbone(files: dict[str, Path]) -> str | None:
    """The repository path of the backbone file among `files`, if one is shipped."""
    return next((name for name in files if name.startswith(f"{BACKBONE_DIR}/")), None)


def _backbone_entry(identity: BackboneIdentity, files: dict[str, Path]) -> dict:
    shipped = shipped_backbone(files)
    fields = {key: value for key, value in asdict(identity).items() if key != "weights"}
    return {**fields, "file": shipped} if shipped else {**fields, "source": "timm's Hugging Face Hub weights"}


def push_run(run_dir: str | os.PathLike, repo_id: str, *, private: bool = False, revision: str | None = None,
             token: str | None = None, include_last: bool = False) -> PushResult:
    """Create `repo_id` if needed (private if asked) and upload the run to it in one commit."""
    try:
        parse_reference(PREFIX + repo_id)  # the names that pulling accepts
    except HubError:
        raise HubPushError(f"REPO_ID '{repo_id}': expected ORG/NAME (letters, digits, '-', '_', '.')") from None
    run = read_run(run_dir)
    files = staged_files(run, include_last)
    api = huggingface_hub.HfApi(token=token, library_name="fgir")
    with tempfile.TemporaryDirectory(prefix="fgir-hub-") as staging:
        root = Path(staging)
        for name, source in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, root / name)
        (root / CARD).write_text(model_card(run, repo_id, shipped_backbone(files)))
        (root / MANIFEST).write_text(json.dumps(manifest(run, files), indent=1) + "\n")
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            if revision is not None:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            commit = api.upload_folder(repo_id=repo_id, folder_path=root, revision=revision,
                                       commit_message=f"fgir hub push {run.run_dir.name}")
        except HUB_ERRORS as err:
            raise HubPushError(f"push of {run.run_dir} to {repo_id} at {hub_constants.ENDPOINT} failed: "
                               f"{_reason(err)}") from None
        published = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return PushResult(repo_id, str(commit), published)


def _reason(err: BaseException) -> str:
    status = getattr(getattr(err, "response", None), "status_code", None)
    if status in (401, 403):
        return f"HTTP {status}, the Hub refused the token (give one with --token or HF_TOKEN, with write access)"
    return failure_reason(err)
