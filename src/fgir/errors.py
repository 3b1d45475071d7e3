"""The base of every error caused by what the user gave fgir (a config, a dataset, a checkpoint,
weights). The CLI prints these as one readable line; anything else is a bug and keeps its traceback."""

from __future__ import annotations


class FgirError(Exception):
    def __init__(self, *args: object) -> None:
        super().__init__(*_without_worker_traceback(type(self), args))


class ConfigError(FgirError, ValueError):
    """A configuration that cannot be used; the message names the offending key or file."""


def _without_worker_traceback(cls: type, args: tuple) -> tuple:
    """A DataLoader re-raises a worker's exception as `cls(text)`, the text holding the worker's whole
    traceback ("Caught <cls> in DataLoader worker process 0. Original Traceback ...", ending with
    "<module>.<cls>: <message>"): keep the message, which is what the user needs to read."""
    text = args[0] if len(args) == 1 and isinstance(args[0], str) else ""
    if not text.startswith(f"Caught {cls.__name__} in ") or "\nOriginal Traceback" not in text:
        return args
    _, found, message = text.rpartition(f"\n{cls.__module__}.{cls.__qualname__}: ")
    return (message.strip(),) if found else args
