"""Evaluation plots: needle-in-a-haystack heatmaps and perplexity-vs-length curves.

matplotlib is imported lazily (Agg backend) by the plotting functions only, so importing this
module costs nothing; PNGs are written atomically (temp file in the target directory, then
``os.replace``). The functions read only a report's ``rows`` (`HasRows`), so this module sits below
`.report` (whose ``EvalReport.plot`` calls `write_plots`) and imports nothing above `.rows`.
"""
from __future__ import annotations

import math
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..core.errors import InputError, MissingDependencyError
from ..core.fsutil import usual_mode
from .rows import EvalRow, HasRows

_DEPTH_DIGITS = 6  # depths are rounded so float noise does not split a grid row


def _pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend; `MissingDependencyError` (an ImportError) with an install hint
    if missing."""
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError("plotting needs matplotlib: pip install matplotlib") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _trial_scores(row: EvalRow) -> list[tuple[float, float]]:
    """(depth, score 0..100) per trial of a passkey / RULER row; trials without a depth are skipped."""
    details = row.details or {}
    out: list[tuple[float, float]] = []
    for t in details.get("trials") or []:  # passkey
        if t.get("depth") is not None:
            out.append((round(float(t["depth"]), _DEPTH_DIGITS), 100.0 if t.get("correct") else 0.0))
    for s in details.get("samples") or []:  # RULER
        if s.get("depth") is not None:
            out.append((round(float(s["depth"]), _DEPTH_DIGITS), 100.0 * float(s.get("score", 0.0))))
    return out


def needle_tasks(report: HasRows) -> list[str]:
    """Tasks (in first-seen order) with at least one row carrying per-trial depths."""
    tasks: list[str] = []
    for row in report.rows:
        if row.task not in tasks and _trial_scores(row):
            tasks.append(row.task)
    return tasks


def depth_grid(report: HasRows, task: str) -> tuple[list[int], list[float], list[list[float]]]:
    """Sorted lengths, sorted depths (0..1) and mean score (0..100) per ``[depth][length]``, NaN if empty.

    Raises `InputError` (a ``ValueError``) if ``task`` has no rows or none of its rows has per-trial depths.
    """
    rows = [r for r in report.rows if r.task == task]
    if not rows:
        raise InputError(f"task {task!r} has no rows in the report")
    cells: dict[tuple[float, int], list[float]] = defaultdict(list)
    for row in rows:
        for depth, score in _trial_scores(row):
            cells[(depth, row.length)].append(score)
    if not cells:
        raise InputError(f"task {task!r} has no per-trial needle depths to plot")
    lengths = sorted({r.length for r in rows})
    depths = sorted({d for d, _ in cells})
    grid = [
        [sum(v) / len(v) if (v := cells.get((d, n))) else math.nan for n in lengths] for d in depths
    ]
    return lengths, depths, grid


def _save(fig: Any, plt: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically, close it and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png", dpi=100)
        usual_mode(tmp)  # mkstemp's 0600 would stay on the PNG
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        plt.close(fig)
    return path


def _heatmap(ax: Any, report: HasRows, task: str, title: str, ylabel: bool = True) -> Any:
    """Draw one needle heatmap on ``ax`` (x: length, y: depth % with 0 on top); return the image."""
    import matplotlib
    import numpy as np

    lengths, depths, grid = depth_grid(report, task)
    data = np.ma.masked_invalid(np.array(grid, dtype=float))
    cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="lightgrey")
    im = ax.imshow(data, cmap=cmap, vmin=0.0, vmax=100.0, aspect="auto", origin="upper")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            if not math.isnan(value):
                colour = "white" if value <= 15 or value >= 85 else "black"  # readable on dark cells
                ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=8, color=colour)
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{round(100 * d, 1):g}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    if ylabel:
        ax.set_ylabel("needle depth (%)")
    ax.set_title(title)
    return im


def plot_needle_heatmap(
    report: HasRows,
    task: str,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    baseline: HasRows | None = None,
) -> Path:
    """Needle-in-a-haystack heatmap of ``task`` as PNG; with ``baseline``, panels baseline | compressed."""
    plt = _pyplot()
    lengths, depths, _ = depth_grid(report, task)  # validate before creating a figure
    if baseline is not None:
        b_lengths, b_depths, _ = depth_grid(baseline, task)
        lengths, depths = max(lengths, b_lengths, key=len), max(depths, b_depths, key=len)
    panel_w = max(4.0, 0.8 * len(lengths) + 2.0)
    height = max(3.0, 0.4 * len(depths) + 1.8)
    panels = 1 if baseline is None else 2
    fig, axes = plt.subplots(
        1, panels, figsize=(panel_w * panels + 1.2, height), squeeze=False, layout="constrained"
    )
    if baseline is None:
        im = _heatmap(axes[0][0], report, task, title or task)
    else:
        _heatmap(axes[0][0], baseline, task, "baseline")
        im = _heatmap(axes[0][1], report, task, "compressed", ylabel=False)
        fig.suptitle(title or task)
    fig.colorbar(im, ax=list(axes[0]), label="score (%)")
    return _save(fig, plt, path)


def plot_ppl_curve(
    reports: dict[str, HasRows], path: str | os.PathLike[str], *, title: str | None = None
) -> Path:
    """Perplexity vs context length, one line per label, log2 x axis; PNG written to ``path``."""
    series: dict[str, list[tuple[int, float]]] = {}
    for label, report in reports.items():
        points = sorted(
            (r.length, r.score) for r in report.rows if r.metric == "ppl" and math.isfinite(r.score)
        )
        if points:
            series[label] = points
    if not series:
        raise InputError("no report has finite perplexity ('ppl') rows to plot")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    for label, points in series.items():
        ax.plot([n for n, _ in points], [p for _, p in points], marker="o", label=label)
    ticks = sorted({n for points in series.values() for n, _ in points})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(n) for n in ticks])
    ax.minorticks_off()
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("perplexity")
    ax.set_title(title or "perplexity vs context length")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, plt, path)


def write_plots(directory: str | os.PathLike, child: HasRows, parent: HasRows | None = None) -> list[Path]:
    """``heatmap_<task>.png`` for every retrieval task with per-trial depths (parent beside the
    child when given) and ``ppl_vs_length.png`` (when the child has perplexity rows and some report a
    finite one: a model whose perplexity overflowed gets no curve, not an error); raises
    `MissingDependencyError` (an ImportError) without matplotlib."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for task in needle_tasks(child):
        out.append(plot_needle_heatmap(child, task, directory / f"heatmap_{task}.png", baseline=parent,
                                       title=f"{task}: score by depth and length"))
    reports = {"parent": parent, "compressed": child} if parent is not None else {"model": child}
    finite = any(r.metric == "ppl" and math.isfinite(r.score) for rep in reports.values() for r in rep.rows)
    if any(r.task == "ppl" for r in child.rows) and finite:
        out.append(plot_ppl_curve(reports, directory / "ppl_vs_length.png", title="perplexity vs length"))
    return out


def plot_lines(series: dict[str, list[tuple[float, float]]], path: str | os.PathLike[str], *, xlabel: str,
               ylabel: str, title: str, log2x: bool = False) -> Path:
    """One line per label of ``(x, y)`` points (e.g. score vs compression ratio per press); PNG at ``path``."""
    series = {k: sorted(v) for k, v in series.items() if v}
    if not series:
        raise InputError(f"nothing to plot for {title!r}")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    for label, points in series.items():
        ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label=label)
    if log2x:
        ticks = sorted({x for points in series.values() for x, _ in points})
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
        ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, plt, path)
