"""Evaluation in the Python API (re-exported by compresskit.api): run `EvalSettings` on a model, compare two
reports under a gate, write report directories."""
from __future__ import annotations

import json
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import torch.nn as nn

from .api_kv import resolve_kv
from .api_models import heldout_text
from .core.errors import InputError
from .eval import EvalReport, Gate, RowCache, count_tokens, report_data, total_units, write_report_dir
from .eval import compare as _compare
from .eval import evaluate as _evaluate
from .eval.settings import EvalSettings
from .kernels.modules import dequantized_cache
from .kvcache import KVPolicy, attached_policy, compress_kv
from .models.embedded import cache_root


def eval_settings(settings: EvalSettings | dict | None = None, **overrides: Any) -> EvalSettings:
    """Validated `EvalSettings` from settings, a dict and/or keyword overrides (``tasks=None`` means the
    default tasks)."""
    if overrides.get("tasks", ...) is None:
        overrides.pop("tasks")
    s = EvalSettings.build(settings, **overrides)
    if s.kv is not None:
        KVPolicy.parse(s.kv)  # a bad policy fails here, before any work
    return s


def eval_units(tokenizer: Any, settings: EvalSettings, text: str | None = None) -> int:
    """Progress units `evaluate` will report for ``settings`` (to size a progress bar)."""
    text = heldout_text() if text is None else text
    return total_units(settings.tasks, settings.lengths, text_tokens=count_tokens(tokenizer, text),
                       ppl_windows=settings.ppl_windows, passkey_trials=settings.passkey_trials,
                       samples=settings.samples, longbench_path=settings.longbench_path,
                       longbench_limit=settings.longbench_limit)


def evaluate(
    model: nn.Module,
    tokenizer: Any,
    settings: EvalSettings | dict | None = None,
    *,
    text: str | None = None,
    progress: Callable[[int], None] | None = None,
    cache_dequantized: bool | None = None,
    **overrides: Any,
) -> EvalReport:
    """Run evaluation tasks at each length; returns an ``EvalReport`` (``.rows``, ``.table()``,
    ``.to_dict()``, ``.plot(dir)``).

    ``settings`` is an `EvalSettings` (or a dict of its fields); keyword arguments set its fields too:
    ``tasks`` (default ``compresskit.eval.DEFAULT_TASKS``: ppl, passkey, two needle tasks, variable
    tracking, common words; see ``compresskit.eval.TASKS`` and ``longbench:<dataset>``, which needs
    ``longbench_path``), ``lengths`` (default 1024), ``ppl_windows``, ``passkey_trials``, ``samples``,
    ``seed``, ``longbench_limit``, ``cache`` and ``kv`` (a KV-cache policy such as ``"snapkv:0.5"``: every
    generation runs under `compress_kv`). Perplexity (and the essay haystack of RULER tasks)
    uses the shipped held-out text unless ``text`` is given. ``cache`` (True: ``$COMPRESSKIT_EVAL_CACHE``,
    else ``$COMPRESSKIT_CACHE/eval``; or a directory; False: off) reuses rows computed before for the same
    weights and settings, so a parent model is scored once. ``cache_dequantized`` (default: on CPU)
    dequantizes each packed weight once for the run instead of on every forward; scores are identical,
    memory is that of the dense model while it runs. Generation tasks decode their prompts 8 at a time
    (left-padded), one at a time under a KV-cache policy. ``progress(n)`` is called as units finish.
    """
    s = eval_settings(settings, **overrides)
    text = heldout_text() if text is None else text
    # what generation will use (retrieval-heads scores the model's heads here)
    policy = resolve_kv(model, tokenizer, s.kv) if s.kv is not None else attached_policy(model)
    row_cache = None
    if s.cache:
        default = os.environ.get("COMPRESSKIT_EVAL_CACHE") or cache_root() / "eval"
        row_cache = RowCache.for_model(Path(default if s.cache is True else s.cache), model, tokenizer)
        if policy is not None:  # rows under a KV policy are not the full cache's
            row_cache = RowCache(row_cache.directory, f"{row_cache.model_key}|kv={policy.to_json()}")
    if cache_dequantized is None:
        cache_dequantized = next(model.parameters()).device.type == "cpu"
    with dequantized_cache(model) if cache_dequantized else nullcontext(), \
            compress_kv(model, policy) if s.kv is not None else nullcontext():
        return _evaluate(model, tokenizer, tasks=s.tasks, lengths=s.lengths, text=text, ppl_windows=s.ppl_windows,
                         passkey_trials=s.passkey_trials, samples=s.samples, seed=s.seed,
                         longbench_path=s.longbench_path, longbench_limit=s.longbench_limit, cache=row_cache,
                         batch_size=1 if policy is not None else 8, progress=progress)


def compare(parent: Any, child: Any, *, max_drop: float | None = None,
            max_ppl_increase: float | None = None):
    """The child's scores against the parent's, per task and length (a ``Comparison``). With
    ``max_drop`` (points for accuracy-type tasks; percent for perplexity unless ``max_ppl_increase``)
    each row is checked and ``.passed`` says whether the gate passed."""
    gate = None if max_drop is None and max_ppl_increase is None else Gate(
        max_drop=2.0 if max_drop is None else max_drop, max_ppl_increase=max_ppl_increase)
    return _compare(parent, child, gate)


def write_eval_report(directory: str | os.PathLike, child: Any, parent: Any = None, comparison: Any = None,
                      meta: dict[str, Any] | None = None) -> list[Path]:
    """``report.json``, ``report.md`` and the PNG plots (needle heatmaps, perplexity vs length) in
    ``directory``."""
    return write_report_dir(directory, child, parent, comparison, meta)


def eval_report_data(child: Any, parent: Any = None, comparison: Any = None,
                     meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The dict ``report.json`` holds, without writing anything (``compresskit eval --json`` prints it)."""
    return report_data(child, parent, comparison, meta)


def load_report(path: str | os.PathLike) -> EvalReport:
    """An ``EvalReport`` from a JSON written by ``write_report`` (or the ``compressed``/``model`` entry
    of a ``report.json``)."""
    data = json.loads(Path(path).read_text())
    data = data.get("compressed") or data.get("model") or data
    if "rows" not in data:
        raise InputError(f"{path} is not an evaluation report (no 'rows'); pass a model or a report JSON")
    return EvalReport.from_dict(data)
