"""An evaluation written to a directory: ``report.json``, ``report.md`` and PNG plots.

The plots are the needle-in-a-haystack heatmap (depth x length) of every retrieval task and the
perplexity-vs-length curve; they need matplotlib (skipped with a note when it is missing).
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from ..core.fsutil import write_json_atomic
from .compare import Comparison
from .plots import write_plots
from .report import EvalReport
from .rows import markdown_table


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _plots(directory: Path, parent: EvalReport | None, child: EvalReport) -> tuple[list[Path], str | None]:
    try:
        return write_plots(directory, child, parent), None
    except ImportError as e:
        return [], str(e)


def report_data(child: EvalReport, parent: EvalReport | None = None, comparison: Comparison | None = None,
                meta: dict[str, Any] | None = None, plots: list[str] = ()) -> dict[str, Any]:
    """What ``report.json`` holds (and ``compresskit eval --json`` prints): ``meta``, the scores (``model``, or
    ``compressed`` and ``parent`` with their ``comparison``) and the plots' file names."""
    return {"meta": meta or {}, "compressed" if parent is not None else "model": child.to_dict(),
            "parent": None if parent is None else parent.to_dict(),
            "comparison": None if comparison is None else comparison.to_dict(), "plots": list(plots)}


def write_report_dir(directory: str | os.PathLike, child: EvalReport, parent: EvalReport | None = None,
                     comparison: Comparison | None = None, meta: dict[str, Any] | None = None) -> list[Path]:
    """Write the report files into ``directory`` (created if needed; files replaced atomically).
    Returns the paths written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    pngs, missing = _plots(directory, parent, child)
    write_json_atomic(directory / "report.json", report_data(child, parent, comparison, meta, [p.name for p in pngs]))
    title = (meta or {}).get("title", "Evaluation")
    md = [f"# {title}\n"]
    md.append(comparison.markdown() if comparison is not None else markdown_table(child.table()))
    md.append(f"\nEvaluation took {child.seconds:.0f} s" + (f" (parent {parent.seconds:.0f} s)" if parent else "")
              + "; rows reused from the cache: "
              + (", ".join(f"{r.task}@{r.length}" for r in (parent.rows if parent else []) + child.rows if r.cached)
                 or "none") + ".\n")
    md += [f"\n![{p.stem}]({p.name})\n" for p in pngs]
    if missing:
        md.append(f"\nPlots skipped: {missing}\n")
    _write_text(directory / "report.md", "".join(md))
    return [directory / "report.json", directory / "report.md", *pngs]


__all__ = ["write_plots", "write_report_dir"]  # write_plots lives in .plots, re-exported here
