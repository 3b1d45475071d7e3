"""`check_dataset`: every problem of a dataset at once, each named by file and line.

The readers stop at the first bad row, which is right for training but slow for repairing a
dataset. Here the split files are scanned row by row with the readers' own row checks (so the
checker and the loader agree on what is wrong), problems are collected instead of raised, and the
images are opened once each in a thread pool. An image listed in two splits (the same path under
the image folder), or two splits naming the same file, is a warning (leakage between train and
test inflates test accuracy) rather than an error.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from fgir.config import ConfigError, DataConfig
from fgir.data.datasets import SPLITS, dataset_info, readable_form
from fgir.data.images import ImageReadError, read_image
from fgir.data.readers import (
    BOX_COLUMNS,
    IMAGE_EXTENSIONS,
    DatasetFileError,
    claim_unique_path,
    is_integer,
    parse_box,
    parse_label,
    parse_relative_path,
)


@dataclass(frozen=True)
class Problem:
    """One problem: the file (split file, split folder or class-names file) and, when it is about
    one row, its 1-based line."""

    file: str
    line: int | None
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.severity}: {self.message}"


@dataclass
class CheckReport:
    """All problems found, and the number of rows (image files, for the folder format) of each split."""

    problems: list[Problem] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when nothing but warnings was found."""
        return not any(problem.severity == "error" for problem in self.problems)

    def format(self) -> str:
        """A readable report: problems grouped by file in line order, then a summary line."""
        by_file: dict[str, list[Problem]] = {}
        for problem in self.problems:
            by_file.setdefault(problem.file, []).append(problem)
        lines = []
        for file, problems in by_file.items():
            lines.append(f"{file} ({_count(len(problems), 'problem')})")
            lines += [f"  {p}" for p in sorted(problems, key=lambda p: p.line or 0)]
        errors = sum(problem.severity == "error" for problem in self.problems)
        counts = ", ".join(f"{split} {n}" for split, n in self.counts.items())
        verdict = "ok" if self.ok else "FAILED"
        warnings = _count(len(self.problems) - errors, "warning")
        lines.append(f"{verdict}: {_count(errors, 'error')}, {warnings}; rows per split: {counts}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "counts": dict(self.counts), "problems": [asdict(p) for p in self.problems]}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


@dataclass(frozen=True)
class _Entry:
    """One image listed by a split: where it is listed and where it is on disk."""

    file: str
    line: int | None
    image: str


def check_dataset(
    data: DataConfig,
    *,
    splits: Iterable[str] = SPLITS,
    open_images: bool = True,
    progress: bool = True,
) -> CheckReport:
    """Check the configured `splits` of `data` and the class list; never raises for a bad dataset.

    With `open_images`, every listed image is decoded with `read_image` (as training would);
    otherwise only its existence is checked. Raises ConfigError only for a config that names no
    checkable dataset (an unknown split or format).
    """
    data = readable_form(data)
    if data.format not in ("csv", "labels", "folder"):
        raise ConfigError(f"data.format must be one of csv, labels, folder, synthetic; got '{data.format}'")
    report = CheckReport()
    num_classes, names = _class_info(data, report)
    entries: list[_Entry] = []
    first_split: dict[Path, str] = {}  # split file or folder -> the first split that names it
    for split in splits:
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got '{split}'")
        name = getattr(data, split)
        if name is None:
            continue
        location = Path(data.root) / name
        same = first_split.setdefault(location.resolve(), split)
        if same != split:  # scanned once: its rows are one listing, not a leak row by row
            kind = "folder" if data.format == "folder" else "file"
            report.problems.append(Problem(str(location), None, same_split_file(same, split, kind), "warning"))
            report.counts[split] = report.counts[same]
            continue
        if data.format == "folder":
            found = _scan_folder(location, names, report)
            report.counts[split] = len(found)
        else:
            image_root = Path(data.root) / data.image_dir
            report.counts[split], found = _scan_split_file(location, data.format, num_classes, image_root, report)
        entries += found
    _check_leakage(entries, report)
    check = partial(_read_problem, max_pixels=data.max_image_pixels) if open_images else _exists_problem
    _check_images(entries, check, progress, report)
    return report


def _class_info(data: DataConfig, report: CheckReport) -> tuple[int | None, list[str] | None]:
    try:
        return dataset_info(data)
    except (ConfigError, DatasetFileError) as err:
        if data.class_names is not None:
            file = str(Path(data.root) / data.class_names)
        elif data.format == "folder":
            file = str(Path(data.root) / data.train)
        else:
            file = "config"
        report.problems.append(_from_error(file, err))
        return None, None


def _from_error(file: str, err: Exception) -> Problem:
    """A Problem from a reader's error, whose message starts `file:line: ` or `file: `."""
    match = re.fullmatch(rf"{re.escape(file)}(?::(\d+))?: (.*)", str(err), re.DOTALL)
    if match is None:
        return Problem(file, None, str(err))
    return Problem(file, int(match[1]) if match[1] else None, match[2])


def _scan_split_file(
    path: Path, file_format: str, num_classes: int | None, image_root: Path, report: CheckReport
) -> tuple[int, list[_Entry]]:
    """The number of data rows of a csv or labels split file and its usable rows (bad rows become
    Problems)."""
    file = str(path)
    if not path.is_file():
        report.problems.append(Problem(file, None, "split file not found"))
        return 0, []
    entries: list[_Entry] = []
    first_line: dict[str, int] = {}
    columns: list[str] | None = None if file_format == "csv" else ["class_id", "dir"]
    rows = 0

    def checked(function: Callable, line: int, *args: object) -> object:
        try:
            return function(path, line, *args)
        except DatasetFileError as err:
            report.problems.append(_from_error(file, err))
            return None

    # utf-8-sig: tolerate an Excel BOM; errors="replace": a bad byte is one bad row, not a bad file.
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as handle:
        reader = csv.reader(handle)
        try:
            for row in reader:
                line = reader.line_num
                if not any(value.strip() for value in row):
                    continue
                if columns is None:
                    columns = [name.strip() for name in row]
                    missing = [name for name in ("class_id", "dir") if name not in columns]
                    if missing:
                        report.problems.append(Problem(file, line, (
                            f"header must name the columns class_id,dir; missing {','.join(missing)}, "
                            f"got '{','.join(columns)}'")))
                        return 0, []
                    continue
                rows += 1
                if any("\ufffd" in value for value in row):
                    report.problems.append(Problem(file, line, "not valid UTF-8 text"))
                    continue
                if len(row) != len(columns):
                    expected = "like the header" if file_format == "csv" else "class_id,relative_path"
                    report.problems.append(Problem(file, line, f"expected {len(columns)} fields {expected}, got {len(row)}"))
                    continue
                label_text = row[columns.index("class_id")].strip()
                if file_format == "labels" and rows == 1 and not is_integer(label_text):
                    report.problems.append(Problem(file, line, (
                        f"class_id must be an integer, got '{label_text}' (this format has no header; "
                        "use data.format=csv for files with a 'class_id,dir' header)")))
                    continue
                label = checked(parse_label, line, label_text, num_classes)
                relative = checked(parse_relative_path, line, row[columns.index("dir")].strip())
                if set(BOX_COLUMNS) <= set(columns):
                    checked(parse_box, line, [row[columns.index(name)] for name in BOX_COLUMNS])
                if relative is None or label is None:
                    continue
                key = checked(claim_unique_path, line, relative, first_line)
                if key is None:
                    continue
                entries.append(_Entry(file, line, os.path.abspath(image_root / key)))
        except csv.Error as err:
            report.problems.append(Problem(file, reader.line_num, f"not a readable CSV file: {err}"))
    if rows == 0:
        report.problems.append(Problem(file, None, "empty split: no rows" + " after the header" * (file_format == "csv")))
    elif not image_root.is_dir():
        report.problems.append(Problem(file, None, f"image folder not found: {image_root} (data.root/data.image_dir)"))
        return rows, []
    return rows, entries


def _scan_folder(root: Path, names: list[str] | None, report: CheckReport) -> list[_Entry]:
    """The image files under `root/<class>/`; unknown class folders are problems."""
    file = str(root)
    if not root.is_dir():
        report.problems.append(Problem(file, None, "split folder not found"))
        return []
    folders = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
    unknown = [name for name in folders if names is not None and name not in names]
    if unknown:
        report.problems.append(Problem(file, None, (
            f"class folder(s) {', '.join(unknown)} are not among the {len(names or [])} known classes")))
    entries = []
    for name in folders:
        for directory, subdirs, files in os.walk(root / name):
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
            entries += [
                _Entry(file, None, os.path.abspath(os.path.join(directory, f)))
                for f in sorted(files)
                if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")
            ]
    if not entries:
        report.problems.append(Problem(file, None, f"empty split: no images ({', '.join(IMAGE_EXTENSIONS)})"))
    return entries


def same_split_file(first: str, second: str, kind: str = "file") -> str:
    """The warning for two splits that name one split file (or folder: `kind`)."""
    return f"data.{first} and data.{second} both name this {kind}: {leakage_harm(first, second)}"


def leakage_harm(first: str, second: str) -> str:
    """What sharing images between the splits `first` and `second` does to the results."""
    if first == "train" or second == "train":
        return f"the {second if first == 'train' else first} score counts images the model trained on"
    return "the checkpoint is chosen on test images, which inflates the test score"


def _check_leakage(entries: list[_Entry], report: CheckReport) -> None:
    first: dict[str, _Entry] = {}
    for entry in entries:
        seen = first.setdefault(entry.image, entry)
        if seen.file != entry.file:
            where = seen.file if seen.line is None else f"{seen.file}:{seen.line}"
            report.problems.append(
                Problem(entry.file, entry.line, f"image {entry.image} is also listed in {where}", "warning")
            )


def _check_images(entries: list[_Entry], check: Callable[[str], str | None], progress: bool,
                  report: CheckReport) -> None:
    """Each distinct image is checked (decoded or stat-ed) once; a failure is reported at every listing."""
    images = list(dict.fromkeys(entry.image for entry in entries))
    with ThreadPoolExecutor() as pool:
        results = pool.map(check, images)
        found = dict(zip(images, tqdm(results, total=len(images), desc="checking images", unit="img",
                                      disable=not progress), strict=True))
    for entry in entries:
        if found[entry.image] is not None:
            report.problems.append(Problem(entry.file, entry.line, found[entry.image]))


def _read_problem(image: str, max_pixels: int) -> str | None:
    try:
        read_image(image, max_pixels=max_pixels)
    except ImageReadError as err:
        return str(err)
    return None


def _exists_problem(image: str) -> str | None:
    return None if os.path.isfile(image) else f"cannot read image {image}: file not found"
