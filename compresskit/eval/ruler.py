"""RULER synthetic long-context tasks (Hsieh et al. 2024, NVIDIA/RULER), offline.

Eleven of RULER's 13 tasks (qa_1 / qa_2 need SQuAD / HotpotQA): eight needle-in-a-haystack
variants, variable tracking (vt), common words (cwe) and frequent words (fwe). Prompts are RULER's
base-model templates with their answer prefixes; the haystack amount is searched with the model's
tokenizer so the prompt is the longest one with at most ``length`` tokens. Scoring is RULER's
string_match_all: the fraction of references found (case-insensitive) in the greedy continuation.
Generation lives in :mod:`.ruler_data`.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..core.errors import ConfigError, InputError
from ._runtime import Progress, eval_mode, generate_greedy
from .passkey import _encode, _largest_fitting, default_depths
from .ruler_data import NIAH_TASKS, TASKS, Draft, build_draft, max_new_tokens

RULER_TASKS: tuple[str, ...] = TASKS
RULER_ALIASES: dict[str, str] = {"niah": "niah_single_1"}
_MIN_LENGTH_SEEDS = 8
_MIN_LENGTH_PROBE = 1024  # any target length below 4096 (where cwe uses its shorter settings)


@dataclass
class RulerSample:
    """One prompt: its token ids (with the tokenizer's special tokens) and the expected answers.

    ``haystack`` is the filler actually used ("noise", "essay", "needle"; None for cwe / fwe),
    ``depth`` the fixed needle depth in [0, 1] or None (random depths, or not a NIAH task).
    """

    task: str
    length: int
    prompt_ids: list[int]
    references: list[str]
    max_new_tokens: int
    depth: float | None = None
    haystack: str | None = None


@dataclass
class RulerTrial:
    """One scored sample: ``score`` is the fraction of references found in ``prediction`` (0..1)."""

    depth: float | None
    haystack: str | None
    prompt_tokens: int
    references: list[str]
    prediction: str
    score: float


@dataclass
class RulerResult:
    """All samples of one task at one length; ``score`` is their mean x 100 (0..100)."""

    task: str
    length: int
    score: float
    samples: list[RulerTrial] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Plain, JSON-friendly dict (samples become a list of dicts)."""
        return asdict(self)


def resolve_task(task: str) -> str:
    """The canonical task name for ``task`` or an alias; ``ValueError`` for unknown names."""
    name = RULER_ALIASES.get(task, task)
    if name not in RULER_TASKS:
        raise ConfigError(f"unknown RULER task {task!r}; choose from {', '.join(RULER_TASKS)} (or 'niah')")
    return name


def _fit(tokenizer: Any, task: str, draft: Draft, length: int) -> list[int]:
    """Ids of ``draft`` with the largest haystack amount whose prompt has at most ``length`` tokens."""

    def count(n: int) -> int:
        return len(_encode(tokenizer, draft.render(n)))

    base = count(0)
    if base > length:
        raise InputError(
            f"length={length} is too short for RULER task {task!r}: even with no haystack the prompt "
            f"takes {base} tokens; use length >= {base}"
        )
    cap = 4 * length + 64  # a unit adds about a token or more: stops the search on any haystack
    cap = cap if draft.max_units is None else min(cap, draft.max_units)
    per_unit = max(1.0, (count(16) - base) / 16)
    best = _largest_fitting(lambda n: n <= cap and count(n) <= length, int((length - base) / per_unit))
    return _encode(tokenizer, draft.render(best))


def ruler_sample(
    task: str,
    tokenizer: Any,
    length: int,
    rng: random.Random,
    *,
    haystack_text: str | None = None,
    depth: float | None = None,
) -> RulerSample:
    """One sample of ``task`` whose prompt is the longest with at most ``length`` tokens.

    Everything random comes from ``rng``. ``haystack_text`` is the essay for the essay-haystack
    NIAH tasks (without it they use the noise sentences). ``depth`` (NIAH only) puts every needle
    at that fraction of the haystack; None draws RULER-style depths. Raises ``ValueError`` if
    ``length`` cannot hold the prompt without any haystack.
    """
    name = resolve_task(task)
    if depth is not None and not (name in NIAH_TASKS and 0.0 <= depth <= 1.0):
        raise ConfigError(f"depth={depth} must lie in [0, 1] and applies to NIAH tasks only (task {name!r})")
    if haystack_text is not None and not haystack_text.split():
        raise InputError("haystack_text is empty (pass None to use the noise haystack)")
    draft = build_draft(name, rng, length, haystack_text, depth)
    ids = _fit(tokenizer, name, draft, length)
    return RulerSample(name, length, ids, draft.references, max_new_tokens(name), depth, draft.haystack)


def ruler_min_length(tokenizer: Any, task: str) -> int:
    """Tokens in the no-haystack prompt, largest over a few draws: about the smallest usable length.

    Keys and values vary in length, so an unlucky draw may need a few tokens more.
    """
    name = resolve_task(task)
    seeds = range(_MIN_LENGTH_SEEDS)
    drafts = (build_draft(name, random.Random(s), _MIN_LENGTH_PROBE, None, None) for s in seeds)
    return max(len(_encode(tokenizer, d.render(0))) for d in drafts)


def score_sample(prediction: str, references: list[str]) -> float:
    """RULER's string_match_all for one sample: the fraction of ``references`` found in ``prediction``.

    Matching is case-insensitive substring containment; the task score is the mean x 100.
    """
    if not references:
        raise ValueError("references must not be empty")
    pred = prediction.lower()
    return sum(r.lower() in pred for r in references) / len(references)


def _all_found(references: list[str]) -> Callable[[str], bool]:
    """True once every reference is in the text: string_match_all is then 1 and more text cannot change it."""
    return lambda text: score_sample(text, references) == 1.0


def ruler(
    model: Any,
    tokenizer: Any,
    task: str,
    length: int,
    *,
    samples: int = 5,
    seed: int = 0,
    haystack_text: str | None = None,
    batch_size: int = 8,
    progress: Progress = None,
) -> RulerResult:
    """RULER ``task`` score (0..100) at prompt ``length`` over ``samples`` greedy generations.

    Samples draw from ``random.Random(seed)``; NIAH sample ``i`` puts its needles at depth
    ``default_depths(samples)[i]`` (evenly spaced over [0, 1]). Each sample generates RULER's
    per-task number of tokens, or fewer once every reference is in its text (the score cannot change then;
    the kept prediction ends there), ``batch_size`` samples at a time (`generate_greedy`); ``progress`` gets the
    samples of each batch.
    """
    name = resolve_task(task)
    if samples < 1:
        raise ConfigError(f"samples={samples} must be >= 1")
    depths = default_depths(samples) if name in NIAH_TASKS else [None] * samples
    rng = random.Random(seed)
    drawn = [ruler_sample(name, tokenizer, length, rng, haystack_text=haystack_text, depth=d) for d in depths]
    with eval_mode(model):
        predictions = generate_greedy(model, tokenizer, [s.prompt_ids for s in drawn], max_new_tokens(name),
                                      batch_size=batch_size, progress=progress,
                                      settled=[_all_found(s.references) for s in drawn])
    trials = [RulerTrial(d, s.haystack, len(s.prompt_ids), s.references, p, score_sample(p, s.references))
              for d, s, p in zip(depths, drawn, predictions)]
    return RulerResult(name, length, 100.0 * sum(t.score for t in trials) / len(trials), trials)
