"""One score per (task, length) and the text formatting every report view shares.

The bottom of the evaluation's result modules: `report` (one run's rows), `compare` (child against
parent) and `plots` import from here, and this module imports none of them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class EvalRow:
    """One score: ``metric`` is "ppl", "acc" (0..100) or "score" (LongBench, 0..100); ``details`` is the
    task result's ``to_dict()``."""

    task: str
    length: int
    score: float
    metric: str
    higher_is_better: bool
    details: dict = field(default_factory=dict)
    cached: bool = False  # served from the evaluation cache, not recomputed in this run

    @classmethod
    def from_dict(cls, data: dict) -> EvalRow:
        """Inverse of ``dataclasses.asdict`` for a row."""
        return cls(
            task=str(data["task"]),
            length=int(data["length"]),
            score=float(data["score"]),
            metric=str(data["metric"]),
            higher_is_better=bool(data["higher_is_better"]),
            details=dict(data.get("details") or {}),
            cached=bool(data.get("cached", False)),
        )


class HasRows(Protocol):
    """Anything holding evaluation rows, such as an `EvalReport`: what the plots read."""

    rows: list[EvalRow]


def markdown_table(rows: list[list[str]]) -> str:
    """A header row plus body rows as a Markdown table."""
    header, *body = rows
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body]) + "\n"


def format_score(score: float, metric: str) -> str:
    """Human-readable score: perplexity with 3 decimals, accuracy as a percentage with 1."""
    if math.isinf(score) or math.isnan(score):
        return str(score)
    return f"{score:.3f}" if metric == "ppl" else f"{score:.1f}%" if metric == "acc" else f"{score:.2f}"
