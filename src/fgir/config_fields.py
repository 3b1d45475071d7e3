"""Checks of single config values, with errors that name the full dotted key, and `MethodSection`:
the base of a method's config section, which checks its fields where they are declared."""

from __future__ import annotations

import difflib
from typing import Any, ClassVar

from fgir.errors import ConfigError


def one_of(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        close = difflib.get_close_matches(str(value), allowed, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"config key '{key}' must be one of {', '.join(allowed)}, got '{value}'{hint}")


def positive(key: str, value: Any) -> None:
    if not value > 0:
        raise ConfigError(f"config key '{key}' must be > 0, got {value}")


def non_negative(key: str, value: Any) -> None:
    if value < 0:
        raise ConfigError(f"config key '{key}' must be >= 0, got {value}")


def fraction(key: str, value: Any) -> None:
    """A probability that must leave something: dropout, label smoothing."""
    if not 0 <= value < 1:
        raise ConfigError(f"config key '{key}' must be in [0, 1), got {value}")


class MethodSection:
    """Base of the dataclass a method keeps under `model.<section>`. Subclasses list which of their
    fields take a fixed set of values or a range; `__post_init__` checks them, so a section is
    valid however it is made (YAML, the command line, or Python)."""

    section: ClassVar[str]  # the YAML section: model.<section>
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {}
    POSITIVE: ClassVar[tuple[str, ...]] = ()
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = ()
    FRACTIONS: ClassVar[tuple[str, ...]] = ()  # in [0, 1)

    @classmethod
    def key(cls, name: str) -> str:
        return f"model.{cls.section}.{name}"

    def __post_init__(self) -> None:
        for name, allowed in self.CHOICES.items():
            one_of(self.key(name), getattr(self, name), allowed)
        for names, check in ((self.POSITIVE, positive), (self.NON_NEGATIVE, non_negative),
                             (self.FRACTIONS, fraction)):
            for name in names:
                check(self.key(name), getattr(self, name))

