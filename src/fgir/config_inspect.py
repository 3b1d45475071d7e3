"""What a configuration holds and where each value came from (`fgir config show`), and what every
key of the schema means (`fgir config keys`).

Origins are found by replaying the layers `load_config` merges (schema defaults, then each config
source's included files and the file itself, command-line overrides, lowest precedence first) and
recording the last layer that sets each leaf; the values themselves come from `load_config`, so
both commands describe exactly what a run would use. `config keys` lists every method's keys, naming
the methods that own a key that not all of them have. Help text is read from the source of the
schema's dataclasses: the
comment lines above a field and the comment at the end of its line, and a nested section's class
docstring, so a dataclass documents its keys where they are defined.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import os
import textwrap
import tokenize
from dataclasses import dataclass
from typing import Any

import yaml

from fgir.config import (
    CHOICES,
    Config,
    ConfigSources,
    _dotlist_to_tree,
    _nested_dataclass,
    _read_sources,
    _unknown_key_error,
    config_schema,
    load_config,
    to_dict,
)
from fgir.config_fields import MethodSection
from fgir.methods import method_names
from fgir.recipes import ROOT as RECIPES

DEFAULT_ORIGIN = "default"
COMMENT_COLUMN_MAX = 56  # comments of `config show` line up at most this far right


def config_with_origins(sources: ConfigSources = None,
                        overrides: list[str] | None = None) -> tuple[Config, dict[str, str]]:
    """The Config `load_config(sources, overrides)` builds and, for every dotted leaf key that a
    layer sets, that layer: the YAML file's path or "command line". Keys missing from the mapping
    keep their schema default."""
    overrides = list(overrides or [])
    config = load_config(sources, overrides)  # validates: the layers below are known to merge
    layers = _read_sources(sources)
    origins: dict[str, str] = {}
    for origin, tree in layers:
        origins.update(dict.fromkeys(_leaf_keys(tree), origin))
    for _, tree in _dotlist_to_tree(overrides):
        origins.update(dict.fromkeys(_leaf_keys(tree), "command line"))
    return config, origins


def _leaf_keys(tree: Any, prefix: str = "") -> list[str]:
    """Dotted keys of the non-mapping values of a nested mapping (mappings merge key by key)."""
    if not isinstance(tree, dict):
        return [prefix.rstrip(".")]
    return [key for name, value in tree.items() for key in _leaf_keys(value, f"{prefix}{name}.")]


def format_with_origins(config: Config, origins: dict[str, str]) -> str:
    """The config as YAML (what `save_config` writes), each value followed by `# <origin>`; file
    paths under the working directory are shown relative to it."""
    rows = _yaml_rows(to_dict(config), origins, "", 0)
    column = min(max(len(text) for text, _ in rows), COMMENT_COLUMN_MAX) + 2
    return "\n".join(text if origin is None else f"{text:<{column}}# {_display(origin)}" for text, origin in rows)


def _yaml_rows(tree: dict, origins: dict[str, str], prefix: str, depth: int) -> list[tuple[str, str | None]]:
    rows: list[tuple[str, str | None]] = []
    for name, value in tree.items():
        key, indent = f"{prefix}{name}", "  " * depth
        if isinstance(value, dict) and value:
            rows.append((f"{indent}{name}:", None))
            rows += _yaml_rows(value, origins, key + ".", depth + 1)
        else:
            rows.append((f"{indent}{name}: {flow_yaml(value)}", origins.get(key, DEFAULT_ORIGIN)))
    return rows


def flow_yaml(value: Any) -> str:
    """A value as it is written on one line of YAML (and on the command line): vit, null, [3, 7]."""
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf")).strip()
    return text.removesuffix("\n...")  # the end-of-document marker after a plain scalar


def _display(origin: str) -> str:
    """Files under the working directory relative to it; the package's recipe files as
    `fgir/recipes/<part>`, wherever fgir is installed."""
    if origin in (DEFAULT_ORIGIN, "command line"):
        return origin
    if os.path.commonpath([origin, RECIPES]) == str(RECIPES):
        return f"fgir/recipes/{os.path.relpath(origin, RECIPES)}"
    relative = os.path.relpath(origin)
    return origin if relative.startswith("..") else relative


@dataclass(frozen=True)
class KeyHelp:
    key: str  # dotted, e.g. train.lr
    type: str  # the field's annotation, e.g. "str | None"; "section" for a nested dataclass
    default: str  # as written in YAML, e.g. "null"; "" for a section
    help: str  # from the source comments (a section: its class docstring); "" when there is none
    choices: tuple[str, ...] = ()  # the values `validate` accepts, when the key has a fixed set
    methods: tuple[str, ...] = ()  # the methods that have this key; () for a key of every method


def schema_help(schema: type = Config, prefix: str = "") -> list[KeyHelp]:
    """Every key of a dataclass schema, sections before their keys, in declaration order."""
    comments = field_comments(schema)
    entries: list[KeyHelp] = []
    for f in dataclasses.fields(schema):
        key = f"{prefix}{f.name}"
        nested = _nested_dataclass(schema, f.name)
        if nested is not None:
            entries.append(KeyHelp(key, "section", "", comments.get(f.name) or class_docstring(nested)))
            entries += schema_help(nested, key + ".")
            continue
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        annotation = f.type if isinstance(f.type, str) else inspect.formatannotation(f.type)
        choices = schema.CHOICES.get(f.name, ()) if issubclass(schema, MethodSection) else CHOICES.get(key, ())
        entries.append(KeyHelp(key, annotation, flow_yaml(default), comments.get(f.name, ""), choices))
    return entries


def config_help() -> list[KeyHelp]:
    """Every key of every method's schema, once, naming the methods that own it: the shared keys,
    then the methods' sections in registration order, each under its top-level section."""
    entries: dict[str, KeyHelp] = {}
    owners: dict[str, list[str]] = {}
    names = method_names()
    for method in names:
        for entry in schema_help(config_schema(method)):
            entries.setdefault(entry.key, entry)
            owners.setdefault(entry.key, []).append(method)
    top = [f.name for f in dataclasses.fields(Config)]
    ordered = sorted(entries.values(), key=lambda entry: top.index(entry.key.split(".")[0]))  # stable
    return [dataclasses.replace(entry, methods=() if len(owners[entry.key]) == len(names) else tuple(owners[entry.key]))
            for entry in ordered]


def field_comments(schema: type) -> dict[str, str]:
    """The comment of each field of a class and of the classes it extends, from their source: the
    comment lines directly above the field, then the comment at the end of its line(s), joined into
    one line. Fields without either are left out; so is every class whose source cannot be read."""
    out: dict[str, str] = {}
    for cls in reversed(schema.__mro__[:-1]):  # a subclass's comment wins
        if dataclasses.is_dataclass(cls):
            out.update(_own_field_comments(cls))
    return out


def _own_field_comments(schema: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(schema))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    comments = {token.start[0]: token.string.lstrip("#").strip()
                for token in tokenize.generate_tokens(io.StringIO(source).readline)
                if token.type == tokenize.COMMENT}
    own_line = {number for number in comments if lines[number - 1].lstrip().startswith("#")}
    out: dict[str, str] = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above, number = [], node.lineno - 1
        while number in own_line:
            above.insert(0, comments[number])
            number -= 1
        trailing = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments and n not in own_line]
        if above or trailing:
            out[node.target.id] = " ".join(above + trailing)
    return out


def class_docstring(schema: type) -> str:
    """The first paragraph of a class's own docstring on one line ("" without one: dataclasses make
    up a signature as `__doc__`, which says nothing)."""
    try:
        node = ast.parse(textwrap.dedent(inspect.getsource(schema))).body[0]
    except (OSError, TypeError):
        return ""
    docstring = ast.get_docstring(node) or ""
    return " ".join(docstring.split("\n\n")[0].split())


def format_keys(entries: list[KeyHelp], prefix: str = "", width: int = 100) -> str:
    """`key: type = default  (choices)` with the help wrapped below it, for the keys under `prefix`."""
    prefix = prefix.rstrip(".")
    chosen = [e for e in entries if not prefix or e.key == prefix or e.key.startswith(prefix + ".")]
    if not chosen:
        raise _unknown_key_error(prefix, "fgir config keys", [entry.key for entry in entries])
    lines = []
    for entry in chosen:
        methods = f"  [method {', '.join(entry.methods)}]" if entry.methods else ""
        if entry.type == "section":
            lines += [""] * bool(lines) + [f"{entry.key}: section{methods}"]
        else:
            choices = f"  ({' | '.join(entry.choices)})" if entry.choices else ""
            lines.append(f"{entry.key}: {entry.type} = {entry.default}{choices}{methods}")
        if entry.help and entry.help != " | ".join(entry.choices):  # a comment listing the choices says no more
            lines += textwrap.wrap(entry.help, width, initial_indent="    ", subsequent_indent="    ",
                                   break_on_hyphens=False)
    return "\n".join(lines)
