"""The task registry and :func:`evaluate`, which runs every task at every length into one report.

Tasks: ``ppl`` (held-out text), ``passkey``, the RULER synthetic tasks (``niah_single_1`` ... ``fwe``,
alias ``niah``) and ``longbench:<dataset>`` (local jsonl files, ``longbench_path``). For LongBench
the length is the prompt budget (head + tail truncation).

Adding a task: write its module (runner + result dataclass), then register a :class:`TaskSpec`
with a ``check`` (fail-fast validation), a ``units`` count (for progress bars) and a ``run``.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..core.errors import ConfigError, InputError
from ._runtime import Progress
from .cache import RowCache
from .longbench import load_longbench, longbench
from .longbench_metrics import base_dataset
from .passkey import passkey, passkey_min_length
from .perplexity import check_perplexity_args, encode_text, num_windows, perplexity_ids
from .report import EvalReport, EvalRow
from .ruler import RULER_ALIASES, RULER_TASKS, ruler, ruler_min_length

DEFAULT_TASKS: tuple[str, ...] = ("ppl", "passkey", "niah_single_1", "niah_multikey_1", "vt", "cwe")
"""The default long-context set: perplexity, passkey, two needle tasks, tracing and aggregation."""
LONGBENCH_PREFIX = "longbench:"


@dataclass(frozen=True)
class TaskKnobs:
    """Task knobs shared by one :func:`evaluate` call (``text_tokens``: tokens of the ppl text;
    ``text``: the held-out text, also the essay haystack of the RULER tasks that use one)."""

    ppl_windows: int | None = 8
    passkey_trials: int = 5
    seed: int = 0
    text_tokens: int = 0
    samples: int = 5
    text: str | None = None
    longbench_path: str | None = None
    longbench_limit: int | None = None
    batch_size: int = 8  # prompts per generate call (generation tasks); the scores do not depend on it

    def cache_fields(self, task: str) -> dict[str, Any]:
        """The settings that change ``task``'s score (the cache key)."""
        if task == "ppl":
            return {"windows": self.ppl_windows, "text": _digest(self.text)}
        if task == "passkey":
            return {"trials": self.passkey_trials, "seed": self.seed}
        if task.startswith(LONGBENCH_PREFIX):
            return {"path": _file_digest(self.longbench_path, task), "limit": self.longbench_limit}
        return {"samples": self.samples, "seed": self.seed, "text": _digest(self.text)}


def _digest(text: str | None) -> str | None:
    import hashlib

    return None if text is None else hashlib.sha256(text.encode()).hexdigest()


def _file_digest(path: str | None, task: str) -> str | None:
    """sha256 of the LongBench records (so an edited file is not served from the cache)."""
    if path is None:
        return None
    records = load_longbench(path, task[len(LONGBENCH_PREFIX):])
    return _digest(repr([(r.id, r.input, r.context, r.answers) for r in records]))


@dataclass(frozen=True)
class TaskSpec:
    """How to validate, size and run one task at one length."""

    check: Callable[[Any, Any, int, TaskKnobs], None]
    units: Callable[[int, TaskKnobs], int]
    run: Callable[[Any, Any, int, TaskKnobs, torch.Tensor | None, Progress], EvalRow]
    needs_text: bool = False


def _ppl_check(model: Any, tokenizer: Any, length: int, s: TaskKnobs) -> None:
    """Fail fast on windows that cannot be formed or exceed the model's positions."""
    check_perplexity_args(model, s.text_tokens, length, s.ppl_windows)


def _ppl_run(
    model: Any, tokenizer: Any, length: int, s: TaskKnobs, ids: torch.Tensor | None, progress: Progress
) -> EvalRow:
    """Perplexity at window length ``length`` as an :class:`EvalRow`."""
    assert ids is not None
    res = perplexity_ids(model, ids, length, max_windows=s.ppl_windows, progress=progress)
    return EvalRow("ppl", length, res.ppl, "ppl", False, res.to_dict())


def _passkey_check(model: Any, tokenizer: Any, length: int, s: TaskKnobs) -> None:
    """Fail fast on prompt lengths too short for the passkey template."""
    if s.passkey_trials < 1:
        raise ConfigError(f"passkey_trials={s.passkey_trials} must be >= 1")
    need = passkey_min_length(tokenizer)
    if length < need:
        raise InputError(f"passkey length={length} is too short: the prompt needs >= {need} tokens")


def _passkey_run(
    model: Any, tokenizer: Any, length: int, s: TaskKnobs, ids: torch.Tensor | None, progress: Progress
) -> EvalRow:
    """Passkey accuracy at prompt length ``length`` as an :class:`EvalRow`."""
    res = passkey(model, tokenizer, length, trials=s.passkey_trials, seed=s.seed, batch_size=s.batch_size,
                  progress=progress)
    return EvalRow("passkey", length, res.accuracy, "acc", True, res.to_dict())


def _ruler_spec(task: str) -> TaskSpec:
    def check(model: Any, tokenizer: Any, length: int, s: TaskKnobs) -> None:
        if s.samples < 1:
            raise ConfigError(f"samples={s.samples} must be >= 1")
        need = ruler_min_length(tokenizer, task)
        if length < need:
            raise InputError(f"{task} length={length} is too short: the prompt needs >= {need} tokens")

    def run(model: Any, tokenizer: Any, length: int, s: TaskKnobs, ids: Any, progress: Progress) -> EvalRow:
        res = ruler(model, tokenizer, task, length, samples=s.samples, seed=s.seed, haystack_text=s.text,
                    batch_size=s.batch_size, progress=progress)
        return EvalRow(task, length, res.score, "acc", True, res.to_dict())

    return TaskSpec(check, lambda n, s: s.samples, run)


def _longbench_spec(task: str) -> TaskSpec:
    dataset = task[len(LONGBENCH_PREFIX):]

    def records(s: TaskKnobs) -> list[Any]:
        if s.longbench_path is None:
            raise InputError(f"task {task!r} needs longbench_path (--longbench DIR): the directory of the "
                             "official LongBench jsonl files")
        return load_longbench(s.longbench_path, dataset)[: s.longbench_limit]

    def check(model: Any, tokenizer: Any, length: int, s: TaskKnobs) -> None:
        base_dataset(dataset)  # unknown dataset names fail here
        if s.longbench_limit is not None and s.longbench_limit < 1:
            raise ConfigError(f"longbench_limit={s.longbench_limit} must be >= 1")
        if not records(s):
            raise InputError(f"no LongBench records for {dataset!r} in {s.longbench_path}")

    def run(model: Any, tokenizer: Any, length: int, s: TaskKnobs, ids: Any, progress: Progress) -> EvalRow:
        res = longbench(model, tokenizer, records(s), dataset, max_length=length, batch_size=s.batch_size,
                        progress=progress)
        return EvalRow(task, length, res.score, "score", True, res.to_dict())

    return TaskSpec(check, lambda n, s: len(records(s)), run)


_FIXED: dict[str, TaskSpec] = {
    "ppl": TaskSpec(
        _ppl_check, lambda n, s: num_windows(s.text_tokens, n, s.ppl_windows), _ppl_run, needs_text=True
    ),
    "passkey": TaskSpec(_passkey_check, lambda n, s: s.passkey_trials, _passkey_run),
    **{t: _ruler_spec(t) for t in RULER_TASKS},
}
TASKS: tuple[str, ...] = tuple(_FIXED)


def _spec(task: str) -> TaskSpec:
    if task.startswith(LONGBENCH_PREFIX):
        return _longbench_spec(task)
    return _FIXED[task]


def _canonical(task: str) -> str | None:
    task = task.strip()
    if task in _FIXED or (task.startswith(LONGBENCH_PREFIX) and len(task) > len(LONGBENCH_PREFIX)):
        return task
    return RULER_ALIASES.get(task)


def validate_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    """Canonical task names, deduplicated in order; ``ValueError`` naming the known tasks on an unknown one."""
    if isinstance(tasks, str):
        tasks = (tasks,)
    known = f"known tasks: {', '.join(TASKS)}, niah (= niah_single_1), longbench:<dataset>"
    unknown = [t for t in tasks if _canonical(t) is None]
    if unknown:
        raise ConfigError(f"unknown eval task(s) {unknown}; {known}")
    if not tasks:
        raise ConfigError(f"no eval tasks given; {known}")
    return tuple(dict.fromkeys(_canonical(t) for t in tasks))  # type: ignore[misc]


def _validate_lengths(lengths: Sequence[int]) -> tuple[int, ...]:
    """Lengths as a tuple of positive ints; ``ValueError`` if empty or not positive."""
    out = tuple(int(n) for n in lengths)
    if not out or any(n < 1 for n in out):
        raise ConfigError(f"lengths must be a non-empty sequence of positive ints, got {list(lengths)}")
    return out


def total_units(
    tasks: Sequence[str],
    lengths: Sequence[int],
    *,
    text_tokens: int = 0,
    ppl_windows: int | None = 8,
    passkey_trials: int = 5,
    samples: int = 5,
    longbench_path: str | None = None,
    longbench_limit: int | None = None,
) -> int:
    """Total progress units :func:`evaluate` will report with the same arguments (rows served from
    the cache report their units at once)."""
    s = TaskKnobs(ppl_windows=ppl_windows, passkey_trials=passkey_trials, text_tokens=text_tokens,
                     samples=samples, longbench_path=longbench_path, longbench_limit=longbench_limit)
    return sum(_spec(t).units(n, s) for t in validate_tasks(tasks) for n in _validate_lengths(lengths))


def count_tokens(tokenizer: Any, text: str) -> int:
    """Tokens of ``text`` exactly as the ppl task counts them (no special tokens)."""
    return int(encode_text(tokenizer, text).numel())


def evaluate(
    model: Any,
    tokenizer: Any,
    *,
    tasks: Sequence[str] = ("ppl", "passkey"),
    lengths: Sequence[int] = (1024,),
    text: str | None = None,
    ppl_windows: int | None = 8,
    passkey_trials: int = 5,
    samples: int = 5,
    seed: int = 0,
    longbench_path: str | None = None,
    longbench_limit: int | None = None,
    cache: RowCache | None = None,
    batch_size: int = 8,
    progress: Progress = None,
) -> EvalReport:
    """Run each task at each length (task-major order) and collect one :class:`EvalRow` per pair.

    ``text`` is required for "ppl" (tokenized once for all lengths) and is the essay haystack of
    the RULER tasks that use one. ``samples`` is the number of prompts per RULER task and length.
    Every (task, length) is validated before any model call, so bad arguments fail fast with
    ``ValueError``. With a ``cache`` (see :class:`RowCache`), rows already computed for the same
    weights, tokenizer and settings are reused and new ones stored. Generation tasks run ``batch_size``
    prompts per ``generate`` call (1: one at a time).
    """
    start = time.perf_counter()
    tasks, lengths = validate_tasks(tasks), _validate_lengths(lengths)
    ids = None
    if any(_spec(t).needs_text for t in tasks):
        if text is None:
            raise InputError("task 'ppl' needs text=... (the evaluation corpus as one string)")
        ids = encode_text(tokenizer, text)
    s = TaskKnobs(ppl_windows, passkey_trials, seed, int(ids.numel()) if ids is not None else 0, samples, text,
                  None if longbench_path is None else str(longbench_path), longbench_limit, batch_size)
    for t in tasks:
        for n in lengths:
            _spec(t).check(model, tokenizer, n, s)
    rows = []
    for t in tasks:
        for n in lengths:
            key = cache.key(t, n, s.cache_fields(t)) if cache is not None else None
            row = cache.get(key) if key is not None else None
            if row is not None:
                if progress is not None:
                    progress(_spec(t).units(n, s))
            else:
                row = _spec(t).run(model, tokenizer, n, s, ids, progress)
                if key is not None:
                    cache.put(key, row)
            rows.append(row)
    return EvalReport(rows=rows, seconds=time.perf_counter() - start)
