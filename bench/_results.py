"""Writing a bench script's results: ``OUT.md`` (the table) and ``OUT.json`` (settings and rows).

Bench scripts are run by path (``python bench/prune.py``), so this sits beside them and is imported
as ``_results``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_results(out: str | Path, md: str, data: dict[str, Any], echo: bool = False) -> None:
    """Write ``md`` to ``out.md`` and ``data`` to ``out.json`` (creating the folder); print ``md`` if ``echo``."""
    if echo:
        print("\n" + md)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".md").write_text(md)
    path.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
