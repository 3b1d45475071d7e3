"""Where a backbone's weights come from (a ViT, or any timm model such as the CNN baselines): the
Hugging Face hub (online, or its local cache), a local file or folder, or nowhere (random init).

Every source ends as one local file that timm's own loader reads, so timm's checkpoint filter adapts
foreign layouts and resamples position embeddings to the image size asked for, and Google's original
`.npz` files go through timm's JAX loader. Pickle-based files are read weights-only.
"""

from __future__ import annotations

import difflib
import logging
import os
import pickle
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import huggingface_hub
import safetensors
import timm
import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import EntryNotFoundError
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from fgir.errors import FgirError
from fgir.models.state_fit import StateMismatch, timm_models_with_shapes, vit_layout

_log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".npz")
# What a hub snapshot or a `save_pretrained` folder holds, in the order timm's hub loader prefers.
HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")
HOW_TO_SUPPLY = (
    "Supply the weights yourself: model.weights=/path/to/file.safetensors (or .pth, .bin, Google .npz, "
    "or a folder holding model.safetensors / pytorch_model.bin), or set HF_HOME to a populated "
    "Hugging Face cache."
)
# What fgir itself passes to timm.create_model besides model.backbone_args.
FGIR_ARGS = ("img_size", "drop_path_rate")
# A reachable hub answers in well under a second; waiting longer only delays the error.
PROBE_TIMEOUT_S = 5.0


class ModelNameError(FgirError, ValueError):
    """A model name timm does not know, or one that is not a ViT; the message suggests close names."""


class WeightsNotFoundError(FgirError, FileNotFoundError):
    """Weights were asked for but no source could provide them; the message lists the sources tried."""


class UnsafeWeightsError(FgirError, ValueError):
    """A weight file pickles Python objects besides tensors (they could run code), so it is refused."""


class InvalidWeightsError(FgirError, ValueError):
    """A weight file that cannot be read, or whose tensors do not fit the model built."""


def create_vit(
    name: str,
    *,
    pretrained: bool,
    weights: str | os.PathLike | None = None,
    img_size: int | tuple[int, int],
    drop_path_rate: float = 0.0,
    **timm_kwargs: Any,
) -> VisionTransformer:
    """Build the timm ViT `name` without a classifier head (num_classes=0).

    `pretrained=False`: random init (`weights` is not read). `pretrained=True`: weights from the file
    or folder `weights`, else from the Hugging Face hub or its local cache. `timm_kwargs` go to
    `timm.create_model` (e.g. `patch_size`, `reg_tokens`, `dynamic_img_size`).
    """
    _require_vit(name)
    return create_headless(name, pretrained=pretrained, weights=weights, img_size=img_size,
                           drop_path_rate=drop_path_rate, **timm_kwargs)


def create_headless(
    name: str, *, pretrained: bool, weights: str | os.PathLike | None = None, **model_args: Any
) -> nn.Module:
    """Any timm model (e.g. a ResNet) without its classifier, weights from the same sources and with
    the same checks as `create_vit`; `model_args` go to `timm.create_model`."""
    require_known(name)
    if not pretrained:
        return timm.create_model(name, pretrained=False, num_classes=0, **model_args)
    path = weight_file(weights) if weights is not None else fetch_hub_weights(name)
    _log.info("%s: loading weights from %s", name, path)
    return _load_headless(name, path, model_args)


def weight_file(weights: str | os.PathLike) -> Path:
    """The weight file that `weights` (a file, or a folder holding one) names."""
    path = Path(weights).expanduser()
    if path.is_dir():
        return _weight_file_in(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file {path}: no such file or directory. {HOW_TO_SUPPLY}")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise InvalidWeightsError(
            f"weights file {path}: unsupported type '{path.suffix}'; expected one of {', '.join(WEIGHT_SUFFIXES)}"
        )
    return path


def fetch_hub_weights(name: str) -> Path:
    """The local path of the hub weights timm registers for `name`: downloaded if the hub is
    reachable, else taken from the Hugging Face cache. Never waits on retries to an unreachable hub."""
    hub_id = _pretrained_cfg_value(name, "hf_hub_id")
    if not hub_id:
        url = _pretrained_cfg_value(name, "url")
        elsewhere = f" (only a download URL: {url}; fetch it yourself)" if url else ""
        raise WeightsNotFoundError(
            f"timm registers no Hugging Face hub weights for {name}{elsewhere}. {HOW_TO_SUPPLY}"
        )
    repo_id, _, revision = hub_id.partition("@")
    hub_filename = _pretrained_cfg_value(name, "hf_hub_filename")
    filenames = (hub_filename,) if hub_filename else HUB_FILENAMES

    problem = "skipped (HF_HUB_OFFLINE is set)" if huggingface_hub.is_offline_mode() else _hub_unreachable()
    if problem is None:
        try:
            return _download_hub_file(repo_id, revision or None, filenames)
        except (EntryNotFoundError, OSError) as err:  # OSError: HTTP errors too
            problem = str(err).splitlines()[0]
    cached = _cached_hub_file(repo_id, revision or None, filenames)
    if cached is not None:
        _log.info("hub repo %s: %s; using the cached %s", repo_id, problem, cached)
        return cached
    raise WeightsNotFoundError(
        f"no pretrained weights for {name} could be reached. Tried:\n"
        f"  - hub repo {repo_id}: {problem}\n"
        f"  - hub cache at {hub_constants.HF_HUB_CACHE}: not present\n"
        f"{HOW_TO_SUPPLY}"
    )


def _require_vit(name: str) -> None:
    require_known(name)
    # Built on the meta device (no memory, no init cost) to learn the class before any download.
    with torch.device("meta"):
        probe = timm.create_model(name, pretrained=False, num_classes=0)
    if not isinstance(probe, VisionTransformer):
        raise ModelNameError(
            f"{name} is a {type(probe).__name__}, not a ViT-family model (timm VisionTransformer with "
            "patch_embed and blocks); pick one of timm.list_models('vit_*'), 'deit*' or similar"
        )


def require_known(name: str) -> None:
    """A ModelNameError unless timm knows `name` (an architecture, optionally `.tag`ged)."""
    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models('vit_*')"
        raise ModelNameError(f"unknown timm model '{arch}'{hint}")
    known = timm.models.get_arch_pretrained_cfgs(arch)
    if tag and name not in known:
        raise ModelNameError(f"timm has no tag '{tag}' for {arch} (known: {', '.join(known) or 'none'})")


def _pretrained_cfg_value(name: str, key: str) -> Any:
    return getattr(timm.models.get_pretrained_cfg(name), key, None)


def _hub_unreachable() -> str | None:
    """Why the hub cannot be asked now, or None. One request without retries: huggingface_hub's own
    retries to an unreachable host take many seconds per file."""
    timeout = hub_constants.HF_HUB_ETAG_TIMEOUT if "HF_HUB_ETAG_TIMEOUT" in os.environ else PROBE_TIMEOUT_S
    try:
        huggingface_hub.get_session().head(hub_constants.ENDPOINT, timeout=timeout)
    except Exception as err:  # any failure to get an answer means no weights from there now
        return f"network unreachable ({type(err).__name__}: {err})"
    return None


def _download_hub_file(repo_id: str, revision: str | None, filenames: Sequence[str]) -> Path:
    for filename in filenames:
        try:
            return Path(huggingface_hub.hf_hub_download(repo_id, filename, revision=revision))
        except EntryNotFoundError as err:
            missing = err
    raise missing


def _cached_hub_file(repo_id: str, revision: str | None, filenames: Sequence[str]) -> Path | None:
    # A pure cache lookup: hf_hub_download(local_files_only=True) still makes a request of its own.
    for filename in filenames:
        cached = huggingface_hub.try_to_load_from_cache(repo_id, filename, revision=revision)
        if isinstance(cached, str):
            return Path(cached)
    return None


def _weight_file_in(folder: Path) -> Path:
    for filename in HUB_FILENAMES:
        if (folder / filename).is_file():
            return folder / filename
    candidates = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not candidates:
        raise WeightsNotFoundError(
            f"weights folder {folder}: holds no {' or '.join(HUB_FILENAMES)} and no other weight file "
            f"({', '.join(WEIGHT_SUFFIXES)}). {HOW_TO_SUPPLY}"
        )
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise InvalidWeightsError(
            f"weights folder {folder}: several weight files ({names}); name one of them"
        )
    return candidates[0]


def _load_headless(name: str, path: Path, model_args: dict[str, Any]) -> nn.Module:
    # Built with the file's own head size so that timm loads strictly (a head-size mismatch would make
    # it ignore missing keys too); the head is then dropped, as it belongs to the method.
    head_rows = _head_rows(name, path)
    overlay = dict(file=str(path), custom_load=path.suffix == ".npz", num_classes=head_rows)
    try:
        network = timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=head_rows, **model_args
        )
    except (RuntimeError, KeyError, ValueError) as err:
        raise InvalidWeightsError(_misfit(name, path, model_args, head_rows, err)) from None
    network.reset_classifier(0)
    return network


def _misfit(name: str, path: Path, model_args: dict[str, Any], head_rows: int, error: Exception) -> str:
    """Why the file does not fit: the keys that differ, what the file holds and the fix."""
    own_args = {key: value for key, value in model_args.items() if key not in FGIR_ARGS}
    built = f"{name} with model.backbone_args {own_args}" if own_args else f"{name} (model.backbone)"
    timm_says = f"weights file {path} does not fit {built}: {str(error).strip().splitlines()[0]}"
    if path.suffix == ".npz":  # Google's arrays, copied by timm one by one: its first line names the one
        return timm_says
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=head_rows, **model_args)
    file_state = _read_state_dict(path)
    mismatch = StateMismatch.between(model.state_dict(), _timm_filtered(file_state, model))
    if not mismatch:  # the failure is not about keys
        return timm_says
    lines = [f"weights file {path} does not fit {built}: {mismatch.counts()}", *mismatch.lines("file")]
    layout = vit_layout(file_state)
    if layout is None:  # not a ViT: the counts say it all (searching CNN families builds every model of them)
        return "\n  ".join(lines)
    lines.append(f"the file holds {layout.describe()}")
    if layout.prefix:
        lines.append(f"its keys start with '{layout.prefix}' (a whole model's state dict); fix: save the ViT's own "
                     "state_dict, without that prefix")
        return "\n  ".join(lines)
    family = type(model).__module__.rpartition(".")[2]
    fitting = timm_models_with_shapes(file_state, family, like=name, patch_size=layout.patch_size[0])
    if fitting:
        also = f" (also fits: {', '.join(fitting[1:3])})" if len(fitting) > 1 else ""
        drop = f", without model.backbone_args {sorted(own_args)}" if own_args else ""
        lines.append(f"fix: model.backbone={fitting[0]}{drop}{also}")
    else:
        lines.append(f"no timm model has these shapes; fix: model.backbone_args={layout.backbone_args()} with "
                     f"H the file's number of attention heads (a divisor of {layout.embed_dim}; shapes do not "
                     "record it)")
    return "\n  ".join(lines)


def _timm_filtered(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as timm's loader offers it to the model: after the checkpoint filter of the
    model's family (foreign layouts renamed, position embeddings and patch kernels resampled)."""
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if filter_fn is None or not state:
        return state
    try:
        return filter_fn(dict(state), model)
    except Exception:  # noqa: BLE001 - a filter that fails on a misfit file: compare the file as it is
        return state


def _head_rows(name: str, path: Path) -> int:
    if path.suffix == ".npz":
        return 0  # timm's JAX loader fills a head only if one of the right size exists; none here
    classifier = _pretrained_cfg_value(name, "classifier") or "head"
    head_name = classifier if isinstance(classifier, str) else classifier[0]
    head = _read_state_dict(path).get(f"{head_name}.weight")
    return 0 if head is None else head.shape[0]


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """timm's reader: safetensors, or torch.load(weights_only=True); unwraps 'model'/'state_dict'."""
    try:
        return timm.models.load_state_dict(str(path))
    except RuntimeError as err:
        unsafe = _unsafe_globals(path) if isinstance(err.__cause__, pickle.UnpicklingError) else []
        if unsafe:
            raise UnsafeWeightsError(
                f"weights file {path}: refused, it pickles Python objects besides tensors ({', '.join(unsafe)}) "
                "that could run code when loaded; .pth/.bin files are read with torch.load(weights_only=True). "
                "Re-save only the state_dict, or convert it to .safetensors, where you trust the file."
            ) from err
        raise InvalidWeightsError(
            f"weights file {path}: cannot be read with torch.load(weights_only=True); it is not a torch.save "
            "file of tensors (other pickles are refused)"
        ) from err
    except (safetensors.SafetensorError, EOFError, ValueError, pickle.UnpicklingError) as err:
        raise InvalidWeightsError(
            f"weights file {path}: cannot be read ({type(err).__name__}: {err})"
        ) from err


def _unsafe_globals(path: Path) -> list[str]:
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except (ValueError, RuntimeError):  # not a torch.save archive: unreadable rather than unsafe
        return []
