"""Readers shared by the dataset preparers: annotation text files and MATLAB files, with errors
that name the file (and line or field) at fault."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fgir.data.readers import DatasetFileError


def require_file(path: Path, hint: str) -> Path:
    """`path` if it is a file; otherwise an error saying which folder was expected (`hint`)."""
    if not path.is_file():
        raise DatasetFileError(f"{path}: file not found (is this the {hint} folder?)")
    return path


def text_lines(path: Path, hint: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, stripped line) for every non-blank, non-comment line."""
    for line_no, line in enumerate(require_file(path, hint).read_text().splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            yield line_no, line


def id_table(path: Path, hint: str) -> dict[str, str]:
    """`id value` per line (space separated; the value may contain spaces) -> {id: value}."""
    table = {}
    for line_no, line in text_lines(path, hint):
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise DatasetFileError(f"{path}:{line_no}: expected 'id value', got '{line}'")
        table[parts[0]] = parts[1].strip()
    return table


def load_mat(path: Path, fields: tuple[str, ...], hint: str) -> dict[str, Any]:
    """The named variables of a MATLAB file, squeezed (cell arrays of strings become arrays of str,
    struct arrays become record arrays), each at least 1-d."""
    try:
        from scipy.io import loadmat
    except ImportError as error:
        raise DatasetFileError(f"{path}: reading MATLAB files needs scipy (pip install scipy)") from error
    try:
        data = loadmat(require_file(path, hint), squeeze_me=True)
    except (ValueError, TypeError, OSError) as error:
        raise DatasetFileError(f"{path}: not a readable MATLAB file ({error})") from error
    missing = [field for field in fields if field not in data]
    if missing:
        raise DatasetFileError(f"{path}: no variable {', '.join(missing)} (found: {', '.join(sorted(k for k in data if not k.startswith('__')))})")
    return {field: np.atleast_1d(data[field]) for field in fields}


def mat_ints(path: Path, name: str, values: np.ndarray) -> list[int]:
    """A numeric MATLAB vector as ints; an error naming the file and variable otherwise."""
    try:
        ints = [int(v) for v in values.ravel()]
    except (TypeError, ValueError) as error:
        raise DatasetFileError(f"{path}: variable {name} is not a vector of numbers") from error
    if any(i != v for i, v in zip(ints, values.ravel(), strict=True)):
        raise DatasetFileError(f"{path}: variable {name} holds non-integer values")
    return ints
