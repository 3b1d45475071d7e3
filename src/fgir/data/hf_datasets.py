"""`data.format=hf`: a Hugging Face `datasets` dataset, on disk or from the Hub cache, read as fgir
reads any dataset.

`data.root` is a folder written by `save_to_disk` or `hf-hub:ORG/NAME` (`load_dataset`, which honours
the cache and HF_HUB_OFFLINE); `data.train` / `val` / `test` name its splits; `data.hf.image_column`
and `data.hf.label_column` name the columns, and the class names come from the label column's
ClassLabel feature. The images are written once, as the bytes the dataset stores (no re-encoding),
into a folder keyed by the splits' fingerprints, with split CSVs beside them: from there the same
readers, transforms, sampler, skip-on-error, preflight and `fgir data check` as for a CSV dataset
apply, and a later run reuses the folder. Writing happens in a temporary sibling renamed into
place, so an interrupted export leaves nothing half-written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from fgir.config import HUB_PREFIX, ConfigError, DataConfig
from fgir.fileio import atomic_write_csv

CLASS_NAMES_FILE = "classid_classname.csv"
MANIFEST = "fgir_hf_export.json"
DEFAULT_EXPORT_DIR = Path("~/.cache/fgir/hf-datasets")


def split_names(data: DataConfig) -> list[str]:
    return [name for name in (data.train, data.val, data.test) if name is not None]


# Exported copies found in this process: {(settings, state of the source files): (folder, classes)}.
# Loading a dataset to fingerprint it costs seconds, and a run asks for the readable form several times.
_EXPORTED: dict[tuple, tuple[Path, int]] = {}


def ensure_hf(data: DataConfig, progress: bool = True) -> DataConfig:
    """The config that reads the exported copy of the dataset `data` names, exporting it first when
    no copy of these splits exists yet."""
    key = (data.root, *split_names(data), data.val is None, data.test is None, data.num_classes,
           dataclasses.astuple(data.hf), source_state(data.root))
    if key not in _EXPORTED or not (_EXPORTED[key][0] / MANIFEST).is_file():
        _EXPORTED[key] = export_once(data, progress)
    target, num_classes = _EXPORTED[key]
    return dataclasses.replace(data, format="csv", root=str(target), image_dir=".", class_names=CLASS_NAMES_FILE,
                               num_classes=num_classes, train=f"{data.train}.csv",
                               val=None if data.val is None else f"{data.val}.csv",
                               test=None if data.test is None else f"{data.test}.csv")


def source_state(root: str) -> tuple:
    """What identifies the files of a dataset folder now (names, sizes, modification times); a Hub
    dataset's cached copy does not change within a process."""
    if root.startswith(HUB_PREFIX) or not Path(root).is_dir():
        return ()
    return tuple(sorted((str(path), path.stat().st_size, path.stat().st_mtime_ns)
                        for path in Path(root).rglob("*") if path.is_file()))


def export_once(data: DataConfig, progress: bool) -> tuple[Path, int]:
    """(the exported folder, the class count), exporting the splits unless a copy exists."""
    splits = load_splits(data)
    features = next(iter(splits.values())).features
    column, label = data.hf.image_column, data.hf.label_column
    names = class_names(features, label, data, data.root)
    fingerprint = hashlib.sha256(json.dumps(
        [column, label, *[(name, split._fingerprint) for name, split in splits.items()]]).encode()).hexdigest()[:16]
    base = Path(os.path.expanduser(data.hf.export_dir or DEFAULT_EXPORT_DIR))
    target = base / f"{Path(data.root.removeprefix(HUB_PREFIX)).name}-{fingerprint}"
    if not (target / MANIFEST).is_file():
        export(splits, column, label, names, target, progress)
    return target, len(names)


def load_splits(data: DataConfig) -> dict:
    """{split name: datasets.Dataset} for the configured splits."""
    try:
        import datasets
    except ImportError:
        raise ConfigError("data.format=hf needs the `datasets` package: pip install 'fgir[hf]'") from None
    root = data.root
    try:
        if root.startswith(HUB_PREFIX):
            loaded = datasets.load_dataset(root.removeprefix(HUB_PREFIX))
        else:
            if not Path(root).exists():
                raise ConfigError(f"data.root: no dataset folder {root} (data.format=hf: a save_to_disk folder "
                                  f"or {HUB_PREFIX}ORG/NAME)")
            loaded = datasets.load_from_disk(root)
    except ConfigError:
        raise
    except Exception as err:  # datasets raises many kinds: missing files, offline and not cached, ...
        raise ConfigError(f"data.root={root}: cannot load the Hugging Face dataset: "
                          f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    missing = [name for name in split_names(data) if name not in loaded]
    if missing:
        keys = ", ".join(f"data.{key}={getattr(data, key)}" for key in ("train", "val", "test")
                         if getattr(data, key) in missing)
        raise ConfigError(f"{keys}: no such split in {root} (it has: {', '.join(loaded)}); name its splits, "
                          "or set data.val=null / data.test=null for one it lacks")
    splits = {name: loaded[name] for name in split_names(data)}
    for key, column in (("image_column", data.hf.image_column), ("label_column", data.hf.label_column)):
        for name, split in splits.items():
            if column not in split.column_names:
                raise ConfigError(f"data.hf.{key}={column}: split '{name}' of {root} has no such column "
                                  f"(columns: {', '.join(split.column_names)})")
    return splits


def class_names(features, label: str, data: DataConfig, root: str) -> list[str]:
    """The names of the label column's ClassLabel feature; for a plain integer column, "0".."C-1"
    with C = data.num_classes."""
    feature = features[label]
    names = getattr(feature, "names", None)
    if names:
        if data.num_classes is not None and data.num_classes != len(names):
            raise ConfigError(f"data.num_classes is {data.num_classes} but the ClassLabel of column '{label}' in "
                              f"{root} lists {len(names)} classes")
        return list(names)
    if data.num_classes is None:
        raise ConfigError(f"column '{label}' of {root} is not a ClassLabel feature, so its class names are "
                          "unknown: set data.num_classes (names 0..C-1)")
    return [str(i) for i in range(data.num_classes)]


def export(splits: dict, column: str, label: str, names: list[str], target: Path, progress: bool) -> None:
    """Write each split's images (their stored bytes) and `<split>.csv` into `target`, atomically."""
    import datasets

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        for name, split in splits.items():
            if len(split) == 0:
                raise ConfigError(f"split '{name}' of the dataset has no rows")
            raw = split.cast_column(column, datasets.Image(decode=False))
            folder = staging / name
            folder.mkdir()
            rows = []
            for index, row in enumerate(tqdm(raw, total=len(raw), desc=f"export {name}", unit="img",
                                             disable=None if progress else True)):
                relative = f"{name}/{index:08d}{extension(row[column])}"
                write_image_bytes(row[column], staging / relative)
                rows.append((row[label], relative))
            atomic_write_csv(staging / f"{name}.csv", ("class_id", "dir"), rows)
        atomic_write_csv(staging / CLASS_NAMES_FILE, ("class_id", "class_name"), enumerate(names))
        (staging / MANIFEST).write_text(json.dumps({"splits": {n: s._fingerprint for n, s in splits.items()},
                                                    "image_column": column, "label_column": label}))
        if target.exists():  # an older, incomplete copy (no manifest): replaced by this complete one
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def extension(image: dict) -> str:
    """The file extension of a stored image: from its original path, else from its bytes' format;
    '.bin' for bytes no image reader recognises (reading it then fails like any broken file)."""
    suffix = Path(image.get("path") or "").suffix.lower()
    if suffix:
        return suffix
    try:
        with Image.open(io.BytesIO(image["bytes"] or b"")) as opened:
            return f".{(opened.format or 'bin').lower().replace('jpeg', 'jpg')}"
    except Exception:  # not an image: keep the bytes, the readers will name the file
        return ".bin"


def write_image_bytes(image: dict, path: Path) -> None:
    if image.get("bytes") is not None:
        path.write_bytes(image["bytes"])
    else:  # a dataset that stores paths to image files
        shutil.copyfile(image["path"], path)
