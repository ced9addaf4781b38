"""mkdocs hook: pages include text from files outside docs/ at build time, so it cannot drift.

A page writes one of these markers on a line of its own:

    <!-- readme-block: main-command -->                the fenced block after `<!-- main-command -->` in
                                                       README.md (the block .ci/run reads)
    <!-- include: bench/results/quality.md -->         a file, by its path from the repository root
    <!-- include: bench/results/export.md shift=2 -->  ... with its headings moved two levels down

A marker naming a missing file or block raises, which fails the build. The functions take plain
strings and paths (no mkdocs import), so tests/docs runs them without mkdocs.

`OPTIONAL_PAGES`: nav entries for pages that another change adds; until the file exists the entry is
left out of the nav (logged at info level) instead of failing ``mkdocs build --strict``.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.includes")

OPTIONAL_PAGES = {"recipes.md"}  # written by the recipes change (compresskit run)

MARKER = re.compile(r"^<!--[ \t]*(readme-block|include):[ \t]*(\S+)((?:[ \t]+\w+=\S+)*)[ \t]*-->[ \t]*$",
                    re.MULTILINE)
HEADING = re.compile(r"^(#{1,6})(?=\s)", re.MULTILINE)


class IncludeError(ValueError):
    """A marker names a file or README block that does not exist."""


def readme_block(readme: str, name: str) -> str:
    """The fenced ```bash block that follows ``<!-- name -->`` in the README, fences included (the
    same block .ci/run extracts with awk)."""
    lines = readme.splitlines()
    try:
        start = lines.index(f"<!-- {name} -->")
    except ValueError:
        raise IncludeError(f"README.md has no <!-- {name} --> marker") from None
    body: list[str] = []
    inside = False
    for line in lines[start + 1:]:
        if not inside and line.startswith("```bash"):
            inside = True
        elif inside and line.startswith("```"):
            return "\n".join(["```bash", *body, "```"])
        elif inside:
            body.append(line)
    raise IncludeError(f"no ```bash block after <!-- {name} --> in README.md")


def include_file(root: Path, rel: str, shift: int = 0) -> str:
    """The text of ``root/rel``, headings moved down ``shift`` levels (at most to level 6)."""
    path = (root / rel).resolve()
    if not path.is_file() or root.resolve() not in path.parents:
        raise IncludeError(f"include: {rel} is not a file in the repository")
    text = path.read_text(encoding="utf-8").strip("\n")
    if shift:
        text = HEADING.sub(lambda m: "#" * min(6, len(m.group(1)) + shift), text)
    return text


def expand(markdown: str, root: Path) -> str:
    """Replace every marker of ``markdown`` by what it names (paths relative to ``root``)."""

    def replace(m: re.Match) -> str:
        kind, arg = m.group(1), m.group(2)
        opts = dict(kv.split("=", 1) for kv in m.group(3).split())
        unknown = set(opts) - {"shift"}
        if unknown:
            raise IncludeError(f"{m.group(0)}: unknown option {', '.join(sorted(unknown))}")
        if kind == "readme-block":
            return readme_block((root / "README.md").read_text(encoding="utf-8"), arg)
        return include_file(root, arg, int(opts.get("shift", 0)))

    return MARKER.sub(replace, markdown)


def drop_missing_optional(nav: Any, docs_dir: Path) -> Any:
    """``nav`` without the entries of `OPTIONAL_PAGES` whose file is not in ``docs_dir`` yet."""
    if isinstance(nav, list):
        kept = [drop_missing_optional(item, docs_dir) for item in nav]
        return [item for item in kept if item is not None]
    if isinstance(nav, dict):
        out = {title: drop_missing_optional(value, docs_dir) for title, value in nav.items()}
        return {title: value for title, value in out.items() if value is not None} or None
    if isinstance(nav, str) and nav in OPTIONAL_PAGES and not (docs_dir / nav).is_file():
        log.info("nav: %s does not exist yet; left out", nav)
        return None
    return nav


# --- mkdocs events ---------------------------------------------------------------------------------

def _root(config: Any) -> Path:
    return Path(config["config_file_path"]).parent


def on_config(config: Any, **kwargs: Any) -> Any:
    if config.get("nav"):
        config["nav"] = drop_missing_optional(config["nav"], Path(config["docs_dir"]))
    return config


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any, **kwargs: Any) -> str:
    from mkdocs.exceptions import PluginError  # a clean build error, not a traceback

    try:
        return expand(markdown, _root(config))
    except IncludeError as e:
        raise PluginError(f"{page.file.src_path}: {e}") from None
