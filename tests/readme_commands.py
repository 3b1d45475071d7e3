"""Commands as README.md and the Makefile write them, read back for tests that type them as a
newcomer does: if the README changes and a command breaks, the test that follows it fails."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# How the documents spell the command: a fresh clone's venv, an activated one, the Makefile's.
FGIR_PROGRAMS = (".venv/bin/fgir", "fgir", "$(BIN)/fgir")


def readme_section(title_start: str) -> str:
    """The text of the README's `## ` section whose title starts with `title_start`."""
    sections = re.split(r"^## ", README.read_text(encoding="utf-8"), flags=re.MULTILINE)
    found = [text for text in sections if text.startswith(title_start)]
    assert len(found) == 1, f"README.md has {len(found)} sections titled '{title_start}...'"
    return found[0]


def code_blocks(text: str, language: str = "") -> list[str]:
    """The fenced code blocks of `text` tagged `language` ("" for untagged ones)."""
    blocks, tag, lines = [], None, []
    for line in text.splitlines():
        if not line.startswith("```"):
            lines.append(line)
        elif tag is None:  # an opening fence
            tag, lines = line[3:].strip(), []
        else:
            if tag == language:
                blocks.append("\n".join(lines) + "\n")
            tag = None
    return blocks


def shell_commands(block: str) -> list[list[str]]:
    """Each command of a shell block as its words, comments dropped and continued lines joined."""
    commands = (shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines())
    return [words for words in commands if words]


def fgir_commands(text: str, verb: str) -> list[list[str]]:
    """Every `fgir <verb> ...` command of the shell blocks in `text`, spelled `fgir ...`."""
    verb_words = verb.split()
    found = []
    for block in code_blocks(text, "bash"):
        for words in shell_commands(block):
            if words[0] in FGIR_PROGRAMS and words[1:1 + len(verb_words)] == verb_words:
                found.append(["fgir", *words[1:]])
    return found


def inline_commands(text: str, prefix: str) -> list[list[str]]:
    """The inline code spans of `text` that start with `prefix` (e.g. "fgir train train.resume="), split."""
    return [shlex.split(span) for span in re.findall(r"`([^`\n]+)`", text) if span.startswith(prefix)]


def make_recipe(target: str) -> list[list[str]]:
    """The commands of a Makefile target, as its recipe lines write them."""
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    match = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", text, flags=re.MULTILINE)
    assert match, f"the Makefile has no target '{target}'"
    return [shlex.split(line) for line in match.group(1).splitlines()]
