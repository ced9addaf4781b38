"""The one record of what was done to a model: where it came from, the passes that ran with their resolved
configs and results, and its evaluation, in one schema.

In memory the record is held in one place, keyed by the model (`record_of`), never as attributes on it:
``load_model`` starts it (from the checkpoint's own record, when it has one), every pass appends to it,
``save`` writes it. On disk it is what ``config.json`` and its side files have always held, which
`ModelRecord.from_saved` reads back (the model card and ``compresskit info`` read it there):

- ``quantization_config``: the manifest, what a loader needs (``config.json`` stays small);
- ``compresskit_evaluation.json``: the evaluation (the full reports, the gate);
- ``quantization_report.json``: what the quantization method did (per-block losses, fallbacks, timings);
- ``compresskit_pruning`` / ``compresskit_distillation``: each pass's summary, and ``pruning.json`` /
  ``distillation.json`` beside it with the rest (kept indices, the loss history);
- ``compresskit_kv``: the KV-cache policy generation uses (``compresskit.load_model`` applies it);
- ``compresskit_recipe``: the recipe run that made it.
"""
from __future__ import annotations

import json
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .manifest import QUANT_METHOD, QuantManifest

# config.json key and side file of each pass kind whose result is saved with a float checkpoint
SAVED_KEYS = {"prune": ("compresskit_pruning", "pruning.json"),
              "distill": ("compresskit_distillation", "distillation.json")}
ROLES = ("teacher", "before", "after")
EVALUATION_FILE = "compresskit_evaluation.json"  # the record's evaluation, beside config.json
REPORT_FILE = "quantization_report.json"  # the quantize pass's report (manifest.report)
KV_KEY = "compresskit_kv"  # config.json: the KV-cache policy compresskit.load_model applies


@dataclass
class Source:
    """The model the record starts from: its ``name`` as the user gave it, the resolved ``path`` and the
    checkpoint's storage ``dtype`` (``"bfloat16"``), which ``save`` keeps."""

    name: str | None = None
    path: str | None = None
    dtype: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PassResult:
    """One pass that ran: its ``kind`` (``quantize``, ``prune``, ...), ``name`` (``rtn-w4g64``), resolved
    ``config`` and JSON-able ``summary``; ``detail`` is what the artifact needs beyond the summary (the
    `QuantManifest` of a quantize pass, the kept indices of a prune pass, the loss history of a distill pass)."""

    kind: str
    name: str
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    detail: Any = None


@dataclass
class Evaluation:
    """A model's evaluation: ``reports`` by role (``before``: the parent, ``after``: this model, and
    ``teacher`` when it was compared with another model; each an ``EvalReport`` dict with ``rows``), or,
    for one read back from a float checkpoint, only their ``scores`` (``{"ppl@1024": 34.5}``); and the
    ``gate`` (the comparison's dict, with ``forced``), None when nothing was compared."""

    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    gate: dict[str, Any] | None = None
    score_only: dict[str, dict[str, float]] | None = None

    @classmethod
    def of(cls, evaluation: dict[str, Any] | None) -> "Evaluation | None":
        """From what ``save(evaluation=...)`` takes or a checkpoint holds: role -> report (objects with
        ``to_dict`` or dicts; rows, or scores only) and ``gate`` -> comparison."""
        if not evaluation:
            return None
        if isinstance(evaluation, Evaluation):
            return evaluation
        plain = {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in evaluation.items()}
        gate = plain.pop("gate", None)
        reports = {k: v for k, v in plain.items() if isinstance(v, dict) and isinstance(v.get("rows"), list)}
        scores = {k: v for k, v in plain.items() if k not in reports and isinstance(v, dict)}
        return cls(reports, gate, scores or None)

    def scores(self) -> dict[str, Any]:
        """``{"before": {"ppl@1024": 34.5, ...}, ..., "gate": {"passed", "gate", "forced"}}``."""
        out: dict[str, Any] = dict(self.score_only or {})
        for role, report in self.reports.items():
            out[role] = {f"{r['task']}@{r['length']}": r["score"] for r in report["rows"]}
        if self.gate is not None:
            out["gate"] = {k: self.gate[k] for k in ("passed", "gate", "forced") if k in self.gate}
        return out

    def to_dict(self) -> dict[str, Any]:
        """The full reports (the manifest's ``evaluation``)."""
        return {**(self.score_only or {}), **self.reports} | ({"gate": self.gate} if self.gate is not None else {})

    def table_source(self) -> dict[str, Any]:
        """Reports and gate in the shape the model card's table reads (scores when no rows are kept)."""
        return self.to_dict() if self.reports else self.scores()


@dataclass
class ModelRecord:
    """What was done to a model: ``source``, ``passes`` in order, ``evaluation`` of the result, and the
    ``recipe`` run that made it (``compresskit run``)."""

    source: Source = field(default_factory=Source)
    passes: list[PassResult] = field(default_factory=list)
    evaluation: Evaluation | None = None
    recipe: dict[str, Any] | None = None

    def last(self, kind: str) -> PassResult | None:
        return next((p for p in reversed(self.passes) if p.kind == kind), None)

    @property
    def manifest(self) -> QuantManifest | None:
        """The quantization manifest of the last quantize pass (None: not quantized)."""
        q = self.last("quantize")
        return None if q is None else q.detail

    def saved_config(self) -> dict[str, Any]:
        """The ``config.json`` entries of the passes kept outside the manifest (their summaries) and of the
        recipe."""
        out: dict[str, Any] = {}
        for kind, (key, _) in SAVED_KEYS.items():
            p = self.last(kind)
            if p is not None:
                out[key] = dict(p.summary)
        kv = self.last("kv")
        if kv is not None:
            out[KV_KEY] = kv.summary
        if self.recipe is not None:
            out["compresskit_recipe"] = self.recipe
        return out

    def side_files(self) -> dict[str, Any]:
        """``pruning.json`` / ``distillation.json`` (each pass's full result), the evaluation and the
        quantization report: file name -> JSON-able object."""
        out = {name: p.detail for kind, (_, name) in SAVED_KEYS.items() if (p := self.last(kind)) is not None}
        if self.evaluation is not None:
            out[EVALUATION_FILE] = self.evaluation.to_dict()
        if self.manifest is not None and self.manifest.report:
            out[REPORT_FILE] = self.manifest.report
        return out

    @classmethod
    def from_saved(cls, config: dict[str, Any], directory: str | Path | None = None,
                   source: Source | None = None) -> "ModelRecord":
        """The record a checkpoint holds (its ``config.json`` dict, and the side files in ``directory``)."""
        record = cls(source=source or Source())
        q = config.get("quantization_config") or {}
        manifest = QuantManifest.from_dict(q) if q.get("quant_method") == QUANT_METHOD else None
        for kind, (key, side) in SAVED_KEYS.items():
            summary = dict(config.get(key) or {})
            if not summary:
                continue
            evaluation = summary.pop("evaluation", None)
            detail = summary
            if directory is not None and (Path(directory) / side).is_file():
                detail = json.loads((Path(directory) / side).read_text())
            record.passes.append(PassResult(kind, str(summary.get("name", kind)), summary.get("recipe") or {},
                                            summary, detail))
            record.evaluation = record.evaluation or Evaluation.of(evaluation)
        if manifest is not None:
            record.passes.append(PassResult("quantize", manifest.recipe.name, manifest.recipe.to_dict(),
                                            {"quantized_linears": len(manifest.linears)}, manifest))
            record.evaluation = Evaluation.of(manifest.evaluation) or record.evaluation
        if directory is not None:  # checkpoints since format 2026-12 keep these beside config.json
            evaluation = _read_json(Path(directory) / EVALUATION_FILE)
            if evaluation:
                record.evaluation = Evaluation.of(evaluation)
            if manifest is not None:
                manifest.report = _read_json(Path(directory) / REPORT_FILE) or manifest.report
        if manifest is not None and record.evaluation is not None:
            manifest.evaluation = record.evaluation.to_dict()
        kv = config.get(KV_KEY)
        if kv:
            record.passes.append(PassResult("kv", str(kv.get("name", "kv")), kv.get("policy") or {}, dict(kv)))
        record.recipe = config.get("compresskit_recipe")
        return record


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


_RECORDS: "weakref.WeakKeyDictionary[Any, ModelRecord]" = weakref.WeakKeyDictionary()


def record_of(model: Any) -> ModelRecord:
    """The record of ``model`` (an empty one for a model compresskit has not seen: built in code, or loaded
    without ``compresskit.load_model``; then its config's own record, if any)."""
    record = _RECORDS.get(model)
    if record is None:
        config = getattr(model, "config", None)
        saved = config.to_dict() if hasattr(config, "to_dict") else {}
        record = ModelRecord.from_saved(saved) if saved else ModelRecord()
        _RECORDS[model] = record
    return record


def set_record(model: Any, record: ModelRecord) -> ModelRecord:
    _RECORDS[model] = record
    return record
