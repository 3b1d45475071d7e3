"""Readers for the split, label and class-name files and folder-per-class layouts.

Every problem is reported as `file:line: what was expected, what was found`. Rows are checked as
they are read (integer labels in range, safe relative paths, each image listed once), but image
files are not opened or even stat-ed here: on a network disk that would cost minutes for a few
hundred thousand rows, and `read_image` names the file anyway when it is missing.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fgir.errors import FgirError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
BOX_COLUMNS = ("x0", "y0", "x1", "y1")


class DatasetFileError(FgirError, ValueError):
    """A split, label or class-name file (or folder) that cannot be used; names file and line."""


class SplitRows(NamedTuple):
    """One split as read from disk: paths relative to the image root, 0-based labels, and the
    optional (N, 4) float32 boxes x0, y0, x1, y1 in original image pixels."""

    paths: list[str]
    labels: list[int]
    boxes: np.ndarray | None


def csv_rows(path: Path) -> Iterator[tuple[csv.Reader, list[str]]]:
    """Non-blank CSV rows with the reader, whose `line_num` names the line of the current row."""
    try:
        handle = open(path, newline="", encoding="utf-8-sig")  # utf-8-sig: tolerate an Excel BOM
    except FileNotFoundError:
        raise DatasetFileError(f"{path}: file not found") from None
    with handle:
        reader = csv.reader(handle)
        try:
            for row in reader:
                if row and any(field.strip() for field in row):
                    yield reader, row
        except csv.Error as err:
            raise DatasetFileError(f"{path}:{reader.line_num}: not a readable CSV file: {err}") from None
        except UnicodeDecodeError:
            # Decoding runs ahead of the CSV reader, a block at a time: its line count says nothing here.
            line, byte = _first_non_utf8(path)
            raise DatasetFileError(f"{path}:{line}: not UTF-8 text (byte 0x{byte:02x}); save the file as UTF-8") from None


def _first_non_utf8(path: Path) -> tuple[int, int]:
    """The 1-based line of the first byte that is not UTF-8, and that byte."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                return number, line[err.start]
    raise AssertionError(f"{path} decodes as UTF-8 line by line")


def parse_label(path: Path, line: int, text: str, num_classes: int | None) -> int:
    """The class index in `text` (row `line` of `path`), within [0, num_classes) when that is known."""
    try:
        label = int(text)
    except ValueError:
        raise DatasetFileError(f"{path}:{line}: class_id must be an integer, got '{text}'") from None
    if label < 0 or (num_classes is not None and label >= num_classes):
        upper = "" if num_classes is None else f", < {num_classes} (the number of classes)"
        raise DatasetFileError(f"{path}:{line}: class_id must be >= 0{upper}, got {label}")
    return label


def parse_relative_path(path: Path, line: int, text: str) -> str:
    """The image path in `text`, refused when empty or when it leaves the image root."""
    if not text.strip():
        raise DatasetFileError(f"{path}:{line}: empty image path")
    # A path outside the image root would let a split file read arbitrary files.
    escapes = ".." in text and os.path.normpath(text).split(os.sep)[0] == ".."
    if os.path.isabs(text) or escapes:
        raise DatasetFileError(
            f"{path}:{line}: image path must be relative and stay inside the image folder, got '{text}'"
        )
    return text


def claim_unique_path(path: Path, line: int, relative: str, first_line: dict[str, int]) -> str:
    """The normalised `relative`, remembered in `first_line`; a second listing of one image is
    refused, since it would be trained on and scored twice."""
    key = os.path.normpath(relative)
    if key in first_line:
        raise DatasetFileError(f"{path}:{line}: duplicate row: '{relative}' is already listed on line {first_line[key]}")
    first_line[key] = line
    return key


def read_header(path: Path, rows: Iterator[tuple[csv.Reader, list[str]]], required: tuple[str, ...]) -> list[str]:
    """The column names of the first row, which must include `required`."""
    header = next(rows, None)
    if header is None:
        raise DatasetFileError(f"{path}: empty file; expected a header '{','.join(required)}' and rows")
    columns = [name.strip() for name in header[1]]
    missing = [name for name in required if name not in columns]
    if missing:
        raise DatasetFileError(
            f"{path}:{header[0].line_num}: header must name the columns {','.join(required)}; "
            f"missing {','.join(missing)}, got '{','.join(columns)}'"
        )
    return columns


def read_split_csv(csv_path: str | os.PathLike, num_classes: int | None = None) -> SplitRows:
    """A split file with the header `class_id,dir` (more columns allowed; `x0,y0,x1,y1` are read as
    boxes when all four are present). `num_classes`, when given, bounds the labels."""
    path = Path(csv_path)
    rows = csv_rows(path)
    columns = read_header(path, rows, ("class_id", "dir"))
    label_at, dir_at = columns.index("class_id"), columns.index("dir")
    box_at = [columns.index(name) for name in BOX_COLUMNS] if set(BOX_COLUMNS) <= set(columns) else None
    paths, labels, boxes = [], [], []
    first_line: dict[str, int] = {}
    for reader, row in rows:
        line = reader.line_num
        if len(row) != len(columns):
            raise DatasetFileError(
                f"{path}:{line}: expected {len(columns)} fields like the header, got {len(row)}"
            )
        labels.append(parse_label(path, line, row[label_at].strip(), num_classes))
        paths.append(parse_relative_path(path, line, row[dir_at].strip()))
        claim_unique_path(path, line, paths[-1], first_line)
        if box_at is not None:
            boxes.append(parse_box(path, line, [row[i] for i in box_at]))
    if not paths:
        raise DatasetFileError(f"{path}: no rows after the header")
    return SplitRows(paths, labels, np.asarray(boxes, np.float32) if box_at is not None else None)


def parse_box(path: Path, line: int, fields: list[str]) -> list[float]:
    """The box `x0,y0,x1,y1` in `fields`, refused unless x0 < x1 and y0 < y1."""
    try:
        x0, y0, x1, y1 = (float(value) for value in fields)
    except ValueError:
        raise DatasetFileError(
            f"{path}:{line}: box x0,y0,x1,y1 must be numbers, got {','.join(fields)}"
        ) from None
    if not (x1 > x0 and y1 > y0):
        raise DatasetFileError(f"{path}:{line}: box needs x1 > x0 and y1 > y0, got {','.join(fields)}")
    return [x0, y0, x1, y1]


def read_label_file(label_path: str | os.PathLike, num_classes: int | None = None) -> SplitRows:
    """A headerless `class_id,relative_path` file (the DAF:re label format)."""
    path = Path(label_path)
    paths, labels = [], []
    first_line: dict[str, int] = {}
    for reader, row in csv_rows(path):
        line = reader.line_num
        if len(row) != 2:
            raise DatasetFileError(f"{path}:{line}: expected 2 fields class_id,relative_path, got {len(row)}")
        label_text = row[0].strip()
        if line == 1 and not is_integer(label_text):
            raise DatasetFileError(
                f"{path}:1: class_id must be an integer, got '{label_text}' (this format has no header; "
                "use data.format=csv for files with a 'class_id,dir' header)"
            )
        labels.append(parse_label(path, line, label_text, num_classes))
        paths.append(parse_relative_path(path, line, row[1].strip()))
        claim_unique_path(path, line, paths[-1], first_line)
    if not paths:
        raise DatasetFileError(f"{path}: no rows")
    return SplitRows(paths, labels, None)


def is_integer(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def read_class_names(names_path: str | os.PathLike) -> list[str]:
    """`class_id,class_name` rows, with or without a header (a first row whose id is not an integer).

    Returns the names indexed by id; ids must be exactly 0..C-1. A name containing unquoted commas
    is kept whole. A header naming more columns (e.g. `class_id,class_name,tag`) selects the
    `class_name` column; its rows must then have one field per column.
    """
    path = Path(names_path)
    names: dict[int, tuple[str, int]] = {}
    first_row = True
    columns: list[str] | None = None
    for reader, row in csv_rows(path):
        line = reader.line_num
        if len(row) < 2:
            raise DatasetFileError(f"{path}:{line}: expected class_id,class_name, got '{','.join(row)}'")
        id_text = row[0].strip()
        if first_row and not is_integer(id_text):
            first_row = False
            header = [field.strip() for field in row]
            if len(header) > 2 and "class_name" in header:
                columns = header
            continue  # the header
        first_row = False
        if columns is None:
            name = ",".join(row[1:]).strip()
        elif len(row) != len(columns):
            raise DatasetFileError(f"{path}:{line}: expected {len(columns)} fields like the header, got {len(row)}")
        else:
            name = row[columns.index("class_name")].strip()
        class_id = parse_label(path, line, id_text, None)
        if class_id in names:
            raise DatasetFileError(
                f"{path}:{line}: class_id {class_id} already given on line {names[class_id][1]}"
            )
        names[class_id] = (name, line)
    if not names:
        raise DatasetFileError(f"{path}: no class names")
    gaps = sorted(set(range(len(names))) - set(names))
    if gaps:
        shown = ", ".join(str(g) for g in gaps[:10]) + (" ..." if len(gaps) > 10 else "")
        raise DatasetFileError(
            f"{path}: class ids must be 0..{len(names) - 1} with no gaps; missing {shown} "
            f"(largest id {max(names)})"
        )
    return [names[i][0] for i in range(len(names))]


def class_folders(root: str | os.PathLike) -> list[str]:
    """Sorted names of the class sub-folders of `root` (hidden folders skipped)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetFileError(f"{root}: not a folder (expected one sub-folder per class)")
    names = sorted(
        entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith(".")
    )
    if not names:
        raise DatasetFileError(f"{root}: no class sub-folders")
    return names


def scan_class_folders(
    root: str | os.PathLike, class_names: list[str] | None = None
) -> tuple[SplitRows, list[str]]:
    """Images under `root/<class>/` (searched recursively, in sorted order) and the class names.

    Ids follow `class_names` when given (so a test folder missing a class keeps the train ids),
    otherwise the sorted folder names.
    """
    root = Path(root)
    folders = class_folders(root)
    names = class_names if class_names is not None else folders
    index = {name: i for i, name in enumerate(names)}
    unknown = [name for name in folders if name not in index]
    if unknown:
        raise DatasetFileError(
            f"{root}: class folder(s) {', '.join(unknown[:5])} are not among the {len(names)} known classes"
        )
    paths, labels = [], []
    for name in folders:
        for directory, subdirs, files in os.walk(root / name):
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
            relative_dir = os.path.relpath(directory, root)
            for file in sorted(files):
                if file.lower().endswith(IMAGE_EXTENSIONS) and not file.startswith("."):
                    paths.append(os.path.join(relative_dir, file))
                    labels.append(index[name])
    if not paths:
        raise DatasetFileError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in the class folders")
    return SplitRows(paths, labels, None), names
