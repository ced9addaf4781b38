"""Every error message quoted in docs/troubleshooting.md can still be produced by compresskit's source.

The page quotes real messages (each line of its ```text blocks), with the values of one run in them.
The source's messages are f-strings and string constants; each becomes a pattern whose formatted
values match anything. A quoted line passes when one pattern with enough literal text matches it
whole, and each value that is long prose (not a number, a path, a name or a comma-separated list) is
itself produced by another pattern: a message built from two f-strings (a reason inserted into a
sentence) is followed into both. A message that was reworded in the code fails here until the page
is updated.
"""
from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "troubleshooting.md"
SOURCES = ("compresskit", "cli", "calib")
PREFIX = re.compile(r"^(?:error|\w*Error): ")  # the CLI's `error: `, an exception's class name
RICH_TAG = re.compile(r"\[/?(?:bold|dim|italic|red|green|yellow|cyan|magenta)(?: [a-z]+)*\]|\[/\]")
HOLE = "\x00"
MIN_LITERAL = 12  # letters of literal text a pattern needs (so "{}: {}" does not match everything)


def _template(node: ast.AST) -> str | None:
    """A string constant or f-string as text, each formatted value replaced by HOLE."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        # str.format fields and %-style fields of plain strings are values too
        return re.sub(r"\{[^{}]*\}|%[sdr]", HOLE, node.value)
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(value.value)
            else:
                parts.append(HOLE)
        return "".join(parts)
    return None


@lru_cache(maxsize=1)
def patterns() -> list[tuple[str, re.Pattern]]:
    """(longest literal piece, compiled pattern) for every message-like string in the source."""
    out = {}
    for top in SOURCES:
        for path in (ROOT / top).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                text = _template(node)
                if text is None:
                    continue
                text = RICH_TAG.sub("", text.replace("{{", "{").replace("}}", "}"))
                pieces = text.split(HOLE)
                if sum(c.isalpha() for c in "".join(pieces)) < MIN_LITERAL:
                    continue
                regex = "(.+?)".join(re.escape(p) for p in pieces)
                out[text] = (max(pieces, key=len), re.compile(regex, re.DOTALL))
    return list(out.values())


def free_value(value: str) -> bool:
    """A value a message may carry without it coming from the source: short, or a list of names."""
    return len(value) <= 40 or re.fullmatch(r"[^\s,]+(?:, [^\s,]+)*", value) is not None


def produced(message: str, depth: int = 0) -> bool:
    for anchor, pattern in patterns():
        if anchor not in message:
            continue
        m = pattern.fullmatch(message)
        if m and all(free_value(v) or (depth < 3 and produced(v, depth + 1)) for v in m.groups()):
            return True
    return False


def quoted_messages() -> list[str]:
    text = PAGE.read_text(encoding="utf-8")
    blocks = re.findall(r"^```text\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    return [PREFIX.sub("", line.strip()) for block in blocks for line in block.splitlines() if line.strip()]


def test_the_page_quotes_messages():
    assert len(quoted_messages()) >= 15


@pytest.mark.parametrize("message", quoted_messages(), ids=lambda m: m[:48])
def test_quoted_message_is_produced_by_the_source(message):
    assert produced(message), f"docs/troubleshooting.md quotes a message the source no longer produces:\n{message}"


def test_a_reworded_message_is_caught():
    assert produced("output directory out already exists; pass --overwrite (overwrite=True) to replace it, "
                    "or choose another path")
    assert not produced("output directory out already exists; pass --force to replace it, or choose another path")
    assert not produced("model_type 'gpt2' is not supported; compresskit supports: llama, and it is a long "
                        "sentence that no f-string in the source writes")
