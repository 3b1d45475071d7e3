"""`hf-hub:ORG/NAME[@revision]`: a run published with `fgir hub push`, as a local checkpoint.

A pushed repository mirrors the run folder (checkpoints/best.safetensors, config.yaml, README.md, the
metrics and plots) plus `fgir_hub.json`, which names the checkpoint and, for an adapter-only
checkpoint, the frozen backbone it needs: the weight file shipped under `backbone/`, or the timm
model whose Hugging Face Hub weights it was trained on. Pulling goes through
`huggingface_hub.snapshot_download`, so the Hub cache, `HF_ENDPOINT` and `HF_HUB_OFFLINE=1` behave
as for every other Hugging Face download.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    HFValidationError,
    HTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from fgir import __version__
from fgir.config import HUB_PREFIX
from fgir.errors import FgirError

PREFIX = HUB_PREFIX
MANIFEST = "fgir_hub.json"
MANIFEST_FORMAT = "fgir-hub/1"
# What a failed Hub call raises: its own HTTP errors (OSError), the HTTP client's connection errors.
HUB_ERRORS = (OSError, HTTPError, EntryNotFoundError, ValueError)


class HubError(FgirError):
    """A Hub repository that cannot be reached, found or read; the message names the repo."""


@dataclass(frozen=True)
class HubReference:
    repo_id: str
    revision: str | None  # None: the default branch

    def describe(self) -> str:
        return f"{self.repo_id}@{self.revision or 'main'}"


@dataclass(frozen=True)
class PulledRun:
    checkpoint: Path  # in the snapshot, in the Hub cache
    backbone: Path | None  # the shipped backbone weights of an adapter-only checkpoint


def is_hub_reference(path: str | os.PathLike) -> bool:
    return isinstance(path, str) and path.startswith(PREFIX)


def parse_reference(text: str) -> HubReference:
    """`hf-hub:ORG/NAME` or `hf-hub:ORG/NAME@revision` (a branch, tag or commit)."""
    repo_id, at, revision = text.removeprefix(PREFIX).partition("@")
    problem = "" if "/" in repo_id and (revision or not at) else "an ORG/NAME, and a revision after any @, are needed"
    if not problem:
        try:
            validate_repo_id(repo_id)
        except HFValidationError as err:
            problem = str(err).splitlines()[0]
    if problem:
        raise HubError(f"'{text}': not a Hugging Face Hub reference, expected hf-hub:ORG/NAME[@revision] ({problem})")
    return HubReference(repo_id, revision or None)


def pull(text: str) -> PulledRun:
    """Download (or find in the Hub cache) the run `text` names; its checkpoint file and backbone."""
    reference = parse_reference(text)
    folder = _snapshot(reference)
    manifest = _read_manifest(folder, reference)
    checkpoint = _inside(folder, manifest.get("checkpoint", "checkpoints/best.safetensors"), reference)
    if not checkpoint.is_file():
        raise HubError(f"hub repo {reference.describe()}: holds no {checkpoint.relative_to(folder)}; "
                       "not a run pushed with fgir hub push")
    backbone = (manifest.get("backbone") or {}).get("file")
    return PulledRun(checkpoint, _inside(folder, backbone, reference) if backbone else None)


def _inside(folder: Path, name: object, reference: HubReference) -> Path:
    """A path the manifest names, which must stay inside the snapshot."""
    if not isinstance(name, str) or Path(name).is_absolute() or ".." in Path(name).parts:
        raise HubError(f"hub repo {reference.describe()}: {MANIFEST} names {name!r}, not a path inside the repository")
    return folder / name


def _snapshot(reference: HubReference) -> Path:
    try:
        return Path(huggingface_hub.snapshot_download(reference.repo_id, revision=reference.revision,
                                                      library_name="fgir", library_version=__version__))
    except HUB_ERRORS as err:
        online = "skipped (HF_HUB_OFFLINE is set)" if huggingface_hub.is_offline_mode() else failure_reason(err)
        # A revision the Hub says does not exist is not looked for in the cache (snapshot_download's rule).
        cache = "" if isinstance(err, RevisionNotFoundError) else \
            f" and the hub cache at {hub_constants.HF_HUB_CACHE} (not present there)"
        raise HubError(
            f"hub repo {reference.describe()} could not be pulled; tried {hub_constants.ENDPOINT} ({online}){cache}. "
            "Check the name and revision, HF_TOKEN for a private repo, or pull it once while online"
        ) from None


def _read_manifest(folder: Path, reference: HubReference) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text())
    except ValueError as err:
        raise HubError(f"hub repo {reference.describe()}: {MANIFEST} does not parse ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise HubError(f"hub repo {reference.describe()}: {MANIFEST} is not an fgir manifest "
                       f"(expected format {MANIFEST_FORMAT!r})")
    return manifest


def failure_reason(err: BaseException) -> str:
    """One line on why a Hub call failed."""
    if isinstance(err, RevisionNotFoundError):
        return "no such revision"
    if isinstance(err, RepositoryNotFoundError):
        return "no such repository, or a private one and no token with access (HF_TOKEN)"
    if isinstance(err, LocalEntryNotFoundError) and err.__cause__ is not None:
        err = err.__cause__  # what the Hub call met, e.g. a refused connection
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"
