"""Checks of single config values, with errors that name the full dotted key, and `MethodSection`:
the base of a method's config section, which checks its fields where they are declared."""

from __future__ import annotations

import difflib
import re
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


# The numeric sections timm's RandAugment and AugMix parsers read.
POLICY_SECTIONS: dict[str, dict[str, type]] = {
    "rand": {"m": int, "n": int, "p": float, "mstd": float, "mmax": int, "inc": int},
    "augmix": {"m": int, "w": int, "d": int, "a": float, "b": int, "mstd": float},
}
RAND_OP_SETS = ("weights", "3a", "3aw")  # rand-t<name>: timm's weighted or 3-augment op sets


def _policy_error(policy: str, problem: str) -> ConfigError:
    return ConfigError(f"config key 'data.auto_augment' must be null or a timm policy such as "
                       f"'rand-m9-mstd0.5-inc1' or 'augmix-m5-w4-d2', got '{policy}': {problem}")


def _grammar(name: str) -> str:
    sections = [f"{key}<{kind.__name__}>" for key, kind in POLICY_SECTIONS[name].items()]
    if name == "rand":
        sections.append(f"t<{'|'.join(RAND_OP_SETS)}>")
    return f"{name} takes {' '.join(sections)}"


def timm_policy(policy: str | None) -> None:
    """ConfigError unless `policy` (data.auto_augment) is None or a RandAugment / AugMix string of
    timm's grammar: `rand` or `augmix`, then `-`-separated sections of a name and a number (`m9`,
    `mstd0.5`); timm itself skips a section it cannot split into a name and a number."""
    if policy is None:
        return
    name, *sections = policy.split("-")
    if name not in POLICY_SECTIONS:
        raise _policy_error(policy, "it must start with 'rand' or 'augmix'")
    values = {}
    for section in sections:
        if name == "rand" and section.startswith("t"):
            if section[1:] not in RAND_OP_SETS:
                raise _policy_error(policy, f"unknown op set '{section}'; {_grammar(name)}")
            continue
        match = re.fullmatch(r"([a-z]+)(\d+(\.\d+)?)", section)
        kind = POLICY_SECTIONS[name].get(match.group(1)) if match else None
        if kind is None or (kind is int and match.group(3)):
            raise _policy_error(policy, f"unknown section '{section}'; {_grammar(name)}")
        values[match.group(1)] = kind(match.group(2))
    if name == "augmix" and values.get("w", 1) < 1:
        raise _policy_error(policy, "w (the number of mixed chains) must be >= 1")
    if name == "rand" and values.get("p", 0) > 1:
        raise _policy_error(policy, "p (the probability of each op) must be in [0, 1]")


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

