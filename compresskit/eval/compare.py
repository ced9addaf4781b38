"""A compressed model against its parent: per-(task, length) deltas and the gate before saving.

Accuracy-type scores (passkey, RULER, LongBench; 0..100) may drop by at most ``max_drop`` points;
perplexity may rise by at most ``max_ppl_increase`` percent (``max_drop`` when not given).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ..core.errors import ConfigError, InputError
from .report import EvalReport
from .rows import format_score, markdown_table

_EPS = 1e-9


@dataclass(frozen=True)
class Gate:
    """Thresholds a compressed model must meet against its parent to be saved."""

    max_drop: float = 2.0
    max_ppl_increase: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_drop", "max_ppl_increase"):
            v = getattr(self, name)
            if v is not None and (not math.isfinite(v) or v < 0):
                raise ConfigError(f"{name}={v} must be a non-negative number")

    def limit(self, metric: str) -> float:
        """The allowed drop: points for accuracy-type metrics, percent for perplexity."""
        if metric == "ppl" and self.max_ppl_increase is not None:
            return self.max_ppl_increase
        return self.max_drop

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CompareRow:
    """``drop`` is how much worse the child is: points (accuracy) or percent (perplexity)."""

    task: str
    length: int
    metric: str
    parent: float
    child: float
    drop: float
    limit: float | None
    passed: bool


def drop_of(metric: str, parent: float, child: float) -> float:
    """Points lost (higher-is-better scores) or percent perplexity increase; inf if the child is NaN/inf."""
    if not math.isfinite(child):
        return math.inf
    if metric == "ppl":
        return 100.0 * (child / parent - 1.0)
    return parent - child


@dataclass
class Comparison:
    """Every (task, length) scored for both models, and whether the gate (if any) passed."""

    rows: list[CompareRow] = field(default_factory=list)
    gate: Gate | None = None

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    @property
    def failures(self) -> list[CompareRow]:
        return [r for r in self.rows if not r.passed]

    def summary(self) -> str:
        """One line: passed, or which rows failed by how much."""
        if self.gate is None:
            return "no gate"
        if self.passed:
            return f"passed (max drop {self.gate.max_drop} points, perplexity +{self.gate.limit('ppl')}%)"
        return "failed: " + "; ".join(
            f"{r.task}@{r.length} {'+' if r.metric == 'ppl' else '-'}{r.drop:.1f}"
            f"{'%' if r.metric == 'ppl' else ' points'} (max {r.limit})" for r in self.failures)

    def to_dict(self) -> dict[str, Any]:
        return {"gate": None if self.gate is None else self.gate.to_dict(), "passed": self.passed,
                "rows": [asdict(r) for r in self.rows]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Comparison":
        gate = Gate(**data["gate"]) if data.get("gate") else None
        return cls([CompareRow(**r) for r in data.get("rows", [])], gate)

    def table(self) -> list[list[str]]:
        """Header plus one list of strings per row (task, length, parent, compressed, change, limit, ok)."""
        header = ["task", "length", "parent", "compressed", "change", "limit", "ok"]
        body = []
        for r in self.rows:
            change = f"{r.drop:+.1f}%" if r.metric == "ppl" else f"{-r.drop:+.1f} pts"
            limit = "-" if r.limit is None else (f"+{r.limit:g}%" if r.metric == "ppl" else f"-{r.limit:g} pts")
            body.append([r.task, str(r.length), format_score(r.parent, r.metric), format_score(r.child, r.metric),
                         change, limit, "yes" if r.passed else "NO"])
        return [header, *body]

    def markdown(self) -> str:
        return markdown_table(self.table()) + f"\nGate: {self.summary()}\n"


def compare(parent: EvalReport, child: EvalReport, gate: Gate | None = None) -> Comparison:
    """Pair the rows of ``child`` with ``parent``'s (same task and length); every child row needs
    a parent row, else ``ValueError`` (evaluate both with the same tasks and lengths)."""
    rows = []
    for c in child.rows:
        p = parent.get(c.task, c.length)
        if p is None:
            raise InputError(f"the parent report has no {c.task}@{c.length}: evaluate both models with the "
                             "same tasks and lengths")
        drop = drop_of(c.metric, p.score, c.score)
        limit = None if gate is None else gate.limit(c.metric)
        rows.append(CompareRow(c.task, c.length, c.metric, p.score, c.score, drop, limit,
                               limit is None or drop <= limit + _EPS))
    return Comparison(rows, gate)
