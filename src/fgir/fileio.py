"""Crash-safe file writing: everything is written to a temporary name in the target folder, then
renamed, so a reader (or a resumed run) never sees half a file."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _named_as(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with _named_as(path):
            yield Path(tmp)
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextlib.contextmanager
def _named_as(path: Path) -> Iterator[None]:
    """An OSError about the temporary file is reported as one about `path`: the temporary name
    means nothing to the user (e.g. `--out` naming a folder: "out.json: Is a directory")."""
    try:
        yield
    except OSError as err:
        if err.filename is None or not Path(err.filename).name.startswith(f".{path.name}."):
            raise
        raise type(err)(err.errno, err.strerror, str(path)) from None


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A CSV file with a header row, '\n' line endings, written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())
