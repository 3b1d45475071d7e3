"""Readable class names from Danbooru tags, and the Danbooru tag lists of DAF:re's tags files.

A character tag is lowercase with underscores and a trailing series qualifier in parentheses,
e.g. `edelgard_von_hresvelgr_(fire_emblem)`; people want "Edelgard von Hresvelgr (Fire Emblem)".
Tag lists come as Python list literals (`['1girl', 'solo']`) and are parsed without evaluating code.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path
from typing import NamedTuple

from fgir.data.readers import DatasetFileError, csv_rows, parse_label, parse_relative_path, read_header

# Kept lowercase inside a name (not as its first word): name particles and short function words.
LOWERCASE_WORDS = frozenset({"von", "van", "der", "den", "de", "di", "da", "du", "la", "le", "of", "the", "and", "no"})
_QUALIFIER = re.compile(r"^(?P<name>.*\S)\s*\((?P<series>[^()]+)\)$")
# Letters capitalised: at a word start and after '.', '/', ':' or '(' ("c.c." -> "C.C.", "fate/stay night"
# -> "Fate/Stay Night", "re:zero" -> "Re:Zero", "(lancer)" -> "(Lancer)"); not after '-', so an honorific stays lowercase ("melon-chan" -> "Melon-chan").
_WORD_START = re.compile(r"(^|[./:(])([^\W\d_])")


class CharacterName(NamedTuple):
    """A class name in three forms: the raw tag, the character and the series ('' if none)."""

    tag: str
    character: str
    series: str

    @property
    def display(self) -> str:
        return f"{self.character} ({self.series})" if self.series else self.character


def _capitalise(words: str) -> str:
    out = []
    for position, word in enumerate(words.split()):
        if position > 0 and word in LOWERCASE_WORDS:
            out.append(word)
        else:
            out.append(_WORD_START.sub(lambda m: m.group(1) + m.group(2).upper(), word))
    return " ".join(out)


def parse_tag(tag: str) -> CharacterName:
    """`edelgard_von_hresvelgr_(fire_emblem)` -> ('...', 'Edelgard von Hresvelgr', 'Fire Emblem').

    Underscores become spaces; the LAST parenthesised group is the series (earlier ones, such as a
    costume qualifier, stay in the character name). Letters already upper-case are kept.
    """
    text = " ".join(tag.replace("_", " ").split())
    if not text:
        raise ValueError(f"empty class tag '{tag}'")
    match = _QUALIFIER.match(text)
    character, series = (match["name"], match["series"]) if match else (text, "")
    return CharacterName(tag, _capitalise(character), _capitalise(series.strip()))


def display_name(tag: str) -> str:
    """The readable name of a Danbooru tag, series in parentheses: 'Edelgard von Hresvelgr (Fire Emblem)'."""
    return parse_tag(tag).display


_FOLDER_NUMBER = re.compile(r"^\d+_")


def folder_display_name(folder: str) -> str:
    """moeImouto class folder -> display name: '000_hatsune_miku' -> 'Hatsune Miku'."""
    return display_name(_FOLDER_NUMBER.sub("", folder, count=1))


# One quoted string as Python writes it (either quote, backslash escapes), and a list of them.
_QUOTED = r"'[^'\\\n]*(?:\\.[^'\\\n]*)*'" + "|" + r'"[^"\\\n]*(?:\\.[^"\\\n]*)*"'
_TAG_LIST = re.compile(rf"\[\s*(?:(?:{_QUOTED})\s*,\s*)*(?:(?:{_QUOTED})\s*)?\]")
_TAG = re.compile(_QUOTED)
_PLAIN_TAG = re.compile(r"'([^']*)'")  # single quotes, no escapes: the usual case, read in one C call


def _tag_list(text: str) -> list[str] | None:
    """The tags of a list literal, or None when `text` is not a list of quoted strings."""
    text = text.strip()
    if not text:
        return []
    if not _TAG_LIST.fullmatch(text):
        return None
    if '"' not in text and "\\" not in text:
        return _PLAIN_TAG.findall(text)
    return [tag[1:-1] if "\\" not in tag else ast.literal_eval(tag) for tag in _TAG.findall(text)]


def parse_tag_list(text: str, where: str = "tag list") -> list[str]:
    """A Python list literal of strings (`['1girl', "jack-o'-lantern"]`) -> the strings.

    Matched by a grammar of quoted strings only, so nothing is ever evaluated (`ast.literal_eval`
    decodes the backslash escapes of one matched string literal). `where` (e.g. 'file:line: column')
    prefixes the error.
    """
    tags = _tag_list(text)
    if tags is None:
        raise _not_a_tag_list(text, where)
    return tags


def _not_a_tag_list(text: str, where: str) -> DatasetFileError:
    text = text.strip()
    shown = text if len(text) <= 60 else text[:57] + "..."
    return DatasetFileError(f"{where}: expected a list of quoted tags like ['a', 'b'], got '{shown}'")


TAGS_COLUMNS = ("id", "dir", "class_id", "tags_cat0", "tags_cat3", "tags_cat4")


class ImageTags(NamedTuple):
    """One row of a DAF:re tags file: Danbooru post id, image path, label and its tags by category
    (0: general, 3: copyright (series), 4: character)."""

    post_id: str
    path: str
    class_id: int
    general: list[str]
    copyright: list[str]
    character: list[str]


def read_tags_file(tags_path: str | os.PathLike, num_classes: int | None = None) -> list[ImageTags]:
    """A `{train,val,test}_tags.csv` file with the header `id,dir,class_id,tags_cat0,tags_cat3,tags_cat4`."""
    path = Path(tags_path)
    rows = csv_rows(path)
    columns = read_header(path, rows, TAGS_COLUMNS)
    at = {name: columns.index(name) for name in TAGS_COLUMNS}
    out = []
    for reader, row in rows:
        line = reader.line_num
        if len(row) != len(columns):
            raise DatasetFileError(f"{path}:{line}: expected {len(columns)} fields like the header, got {len(row)}")
        tags = [_tag_list(row[at[name]]) for name in TAGS_COLUMNS[3:]]
        if None in tags:
            name = TAGS_COLUMNS[3 + tags.index(None)]
            raise _not_a_tag_list(row[at[name]], f"{path}:{line}: column {name}")
        out.append(ImageTags(row[at["id"]].strip(), parse_relative_path(path, line, row[at["dir"]].strip()),
                             parse_label(path, line, row[at["class_id"]].strip(), num_classes), *tags))
    return out


__all__ = [
    "CharacterName",
    "ImageTags",
    "display_name",
    "folder_display_name",
    "parse_tag",
    "parse_tag_list",
    "read_tags_file",
]
