"""The task registry and :func:`evaluate`, which runs every task at every length into one report.

Adding a task: write its module (runner + result dataclass), then register a :class:`TaskSpec`
with a ``check`` (fail-fast validation), a ``units`` count (for progress bars) and a ``run``.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ._runtime import Progress
from .passkey import passkey, passkey_min_length
from .perplexity import check_perplexity_args, encode_text, num_windows, perplexity_ids
from .report import EvalReport, EvalRow


@dataclass(frozen=True)
class EvalSettings:
    """Task knobs shared by one :func:`evaluate` call (``text_tokens``: tokens of the ppl text)."""

    ppl_windows: int | None = 8
    passkey_trials: int = 5
    seed: int = 0
    text_tokens: int = 0


@dataclass(frozen=True)
class TaskSpec:
    """How to validate, size and run one task at one length."""

    check: Callable[[Any, Any, int, EvalSettings], None]
    units: Callable[[int, EvalSettings], int]
    run: Callable[[Any, Any, int, EvalSettings, torch.Tensor | None, Progress], EvalRow]
    needs_text: bool = False


def _ppl_check(model: Any, tokenizer: Any, length: int, s: EvalSettings) -> None:
    """Fail fast on windows that cannot be formed or exceed the model's positions."""
    check_perplexity_args(model, s.text_tokens, length, s.ppl_windows)


def _ppl_run(
    model: Any, tokenizer: Any, length: int, s: EvalSettings, ids: torch.Tensor | None, progress: Progress
) -> EvalRow:
    """Perplexity at window length ``length`` as an :class:`EvalRow`."""
    assert ids is not None
    res = perplexity_ids(model, ids, length, max_windows=s.ppl_windows, progress=progress)
    return EvalRow("ppl", length, res.ppl, "ppl", False, res.to_dict())


def _passkey_check(model: Any, tokenizer: Any, length: int, s: EvalSettings) -> None:
    """Fail fast on prompt lengths too short for the passkey template."""
    if s.passkey_trials < 1:
        raise ValueError(f"passkey_trials={s.passkey_trials} must be >= 1")
    need = passkey_min_length(tokenizer)
    if length < need:
        raise ValueError(f"passkey length={length} is too short: the prompt needs >= {need} tokens")


def _passkey_run(
    model: Any, tokenizer: Any, length: int, s: EvalSettings, ids: torch.Tensor | None, progress: Progress
) -> EvalRow:
    """Passkey accuracy at prompt length ``length`` as an :class:`EvalRow`."""
    res = passkey(model, tokenizer, length, trials=s.passkey_trials, seed=s.seed, progress=progress)
    return EvalRow("passkey", length, res.accuracy, "acc", True, res.to_dict())


_REGISTRY: dict[str, TaskSpec] = {
    "ppl": TaskSpec(
        _ppl_check, lambda n, s: num_windows(s.text_tokens, n, s.ppl_windows), _ppl_run, needs_text=True
    ),
    "passkey": TaskSpec(_passkey_check, lambda n, s: s.passkey_trials, _passkey_run),
}
TASKS: tuple[str, ...] = tuple(_REGISTRY)


def validate_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    """Deduplicated tasks in order; ``ValueError`` naming the known tasks on an unknown one."""
    if isinstance(tasks, str):
        tasks = (tasks,)
    unknown = [t for t in tasks if t not in _REGISTRY]
    if unknown:
        raise ValueError(f"unknown eval task(s) {unknown}; known tasks: {', '.join(TASKS)}")
    if not tasks:
        raise ValueError(f"no eval tasks given; known tasks: {', '.join(TASKS)}")
    return tuple(dict.fromkeys(tasks))


def _validate_lengths(lengths: Sequence[int]) -> tuple[int, ...]:
    """Lengths as a tuple of positive ints; ``ValueError`` if empty or not positive."""
    out = tuple(int(n) for n in lengths)
    if not out or any(n < 1 for n in out):
        raise ValueError(f"lengths must be a non-empty sequence of positive ints, got {list(lengths)}")
    return out


def total_units(
    tasks: Sequence[str],
    lengths: Sequence[int],
    *,
    text_tokens: int = 0,
    ppl_windows: int | None = 8,
    passkey_trials: int = 5,
) -> int:
    """Total progress units :func:`evaluate` will report with the same arguments.

    ``text_tokens`` is the token count of the ppl text (see :func:`count_tokens`); the sum of
    all ``progress`` calls of a successful :func:`evaluate` equals this number.
    """
    s = EvalSettings(ppl_windows=ppl_windows, passkey_trials=passkey_trials, text_tokens=text_tokens)
    return sum(_REGISTRY[t].units(n, s) for t in validate_tasks(tasks) for n in _validate_lengths(lengths))


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
    seed: int = 0,
    progress: Progress = None,
) -> EvalReport:
    """Run each task at each length (task-major order) and collect one :class:`EvalRow` per pair.

    ``text`` is required for "ppl" and is tokenized once for all lengths. Every (task, length)
    is validated before any model call, so bad arguments fail fast with ``ValueError``.
    """
    start = time.perf_counter()
    tasks, lengths = validate_tasks(tasks), _validate_lengths(lengths)
    ids = None
    if any(_REGISTRY[t].needs_text for t in tasks):
        if text is None:
            raise ValueError("task 'ppl' needs text=... (the evaluation corpus as one string)")
        ids = encode_text(tokenizer, text)
    s = EvalSettings(ppl_windows, passkey_trials, seed, int(ids.numel()) if ids is not None else 0)
    for t in tasks:
        for n in lengths:
            _REGISTRY[t].check(model, tokenizer, n, s)
    rows = [_REGISTRY[t].run(model, tokenizer, n, s, ids, progress) for t in tasks for n in lengths]
    return EvalReport(rows=rows, seconds=time.perf_counter() - start)
