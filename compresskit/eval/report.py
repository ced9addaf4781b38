"""Task-independent result container: one :class:`EvalReport` per run, holding one :class:`EvalRow` (defined in
`.rows`) per (task, length)."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .plots import write_plots
from .rows import EvalRow, format_score, markdown_table  # noqa: F401 (EvalRow, markdown_table re-exported)


@dataclass
class EvalReport:
    """All rows of one :func:`compresskit.eval.evaluate` call and its wall time in seconds."""

    rows: list[EvalRow] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """Plain, JSON-friendly dict."""
        return {"rows": [asdict(r) for r in self.rows], "seconds": self.seconds}

    @classmethod
    def from_dict(cls, data: dict) -> EvalReport:
        """Rebuild a report written by :meth:`to_dict`."""
        rows = [EvalRow.from_dict(r) for r in data.get("rows", [])]
        return cls(rows=rows, seconds=float(data.get("seconds", 0.0)))

    def get(self, task: str, length: int) -> EvalRow | None:
        """The row for ``task`` at ``length``, or None if it was not run."""
        return next((r for r in self.rows if r.task == task and r.length == length), None)

    def plot(self, directory: str | os.PathLike, baseline: EvalReport | None = None) -> list[Path]:
        """PNG plots into ``directory``: a depth x length heatmap per retrieval task (``baseline``
        beside it when given) and perplexity vs length. Returns the paths."""
        return write_plots(directory, self, baseline)

    def table(self) -> list[list[str]]:
        """Header plus one list of strings per row: task, length, metric, score, better."""
        header = ["task", "length", "metric", "score", "better"]
        body = [
            [
                r.task,
                str(r.length),
                r.metric,
                format_score(r.score, r.metric),
                "higher" if r.higher_is_better else "lower",
            ]
            for r in self.rows
        ]
        return [header, *body]
