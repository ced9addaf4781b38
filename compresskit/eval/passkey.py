"""Passkey retrieval (the prompt of Landmark Attention, Mohtashami & Jaggi 2023).

A 5-digit key is hidden at a depth fraction inside repeated filler text; the model is asked to
repeat it. Scoring is exact match of the first run of digits in the greedy continuation.
"""
from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


from ..core.errors import ConfigError, InputError
from ._runtime import Progress, eval_mode, generate_greedy

PREFIX = (
    "There is an important info hidden inside a lot of irrelevant text. "
    "Find it and memorize them. I will quiz you about the important information there.\n"
)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key. "
SUFFIX = "\nWhat is the pass key? The pass key is"
KEY_MIN, KEY_MAX = 10000, 99999
_DIGITS = re.compile(r"\d+")


@dataclass
class PasskeyTrial:
    """One prompt: where the key was hidden, what the model answered, and whether it matched."""

    length: int
    depth: float
    key: int
    prediction: str
    correct: bool


@dataclass
class PasskeyResult:
    """All trials at one prompt length; ``accuracy`` is the percentage of correct trials (0..100)."""

    length: int
    accuracy: float
    trials: list[PasskeyTrial] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Plain, JSON-friendly dict (trials become a list of dicts)."""
        return asdict(self)


def passkey_text(n_filler: int, depth: float, key: int) -> str:
    """The prompt text with ``n_filler`` filler units and the needle after ``round(depth * n_filler)``."""
    before = round(depth * n_filler)
    return (
        PREFIX + FILLER * before + NEEDLE.format(key=key) + FILLER * (n_filler - before) + SUFFIX
    )


def _encode(tokenizer: Any, text: str) -> list[int]:
    """Prompt token ids, with the tokenizer's usual special tokens (e.g. BOS) as in generation."""
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def _largest_fitting(fits: Callable[[int], bool], guess: int) -> int:
    """Largest ``n >= 0`` with ``fits(n)`` assuming ``fits`` is monotone and ``fits(0)`` holds."""
    guess = max(guess, 1)
    lo, hi = 0, guess
    if fits(guess):
        lo, step = guess, max(1, guess // 64)
        while fits(lo + step):
            lo, step = lo + step, step * 2
        hi = lo + step
    while hi - lo > 1:  # invariant: fits(lo), not fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def passkey_prompt(tokenizer: Any, length: int, depth: float, key: int) -> list[int]:
    """Token ids of the longest passkey prompt that does not exceed ``length`` tokens.

    The number of filler units is searched with the tokenizer's real token counts, so merges
    across unit boundaries are accounted for. Raises ``ValueError`` if even a prompt with no
    filler is longer than ``length`` or ``depth`` is outside [0, 1].
    """
    if not 0.0 <= depth <= 1.0:
        raise ConfigError(f"depth={depth} must lie in [0, 1]")
    base = len(_encode(tokenizer, passkey_text(0, depth, key)))
    if base > length:
        raise InputError(
            f"length={length} is too short for a passkey prompt: even with no filler it takes "
            f"{base} tokens; use length >= {base}"
        )
    per_unit = max(1.0, len(_encode(tokenizer, FILLER * 8)) / 8)
    best = _largest_fitting(
        lambda n: len(_encode(tokenizer, passkey_text(n, depth, key))) <= length,
        int((length - base) / per_unit),
    )
    return _encode(tokenizer, passkey_text(best, depth, key))


def passkey_min_length(tokenizer: Any) -> int:
    """Tokens in the no-filler prompt with a 5-digit key: roughly the smallest usable length (+-1 per key)."""
    return len(_encode(tokenizer, passkey_text(0, 0.5, KEY_MAX)))


def default_depths(trials: int) -> list[float]:
    """``trials`` depths evenly spaced over [0, 1]; a single trial sits at 0.5."""
    if trials == 1:
        return [0.5]
    return [i / (trials - 1) for i in range(trials)]


def score_prediction(prediction: str, key: int) -> bool:
    """True iff the first run of digits in ``prediction`` is exactly ``key``."""
    match = _DIGITS.search(prediction)
    return match is not None and match.group(0) == str(key)


def passkey(
    model: Any,
    tokenizer: Any,
    length: int,
    *,
    trials: int = 5,
    seed: int = 0,
    depths: Sequence[float] | None = None,
    max_new_tokens: int = 10,
    batch_size: int = 8,
    progress: Progress = None,
) -> PasskeyResult:
    """Passkey retrieval accuracy at prompt ``length`` over ``trials`` prompts.

    Keys are drawn from ``random.Random(seed)`` in [10000, 99999]. Trial ``i`` hides its key at
    ``depths[i % len(depths)]`` (default: evenly spaced over [0, 1]). Prompts are generated
    ``batch_size`` at a time (`generate_greedy`); ``progress`` gets the trials of each batch.
    """
    if trials < 1:
        raise ConfigError(f"trials={trials} must be >= 1")
    depth_list = list(depths) if depths is not None else default_depths(trials)
    if not depth_list:
        raise ConfigError("depths must not be empty (or pass None for evenly spaced depths)")
    bad = [d for d in depth_list if not 0.0 <= d <= 1.0]
    if bad:
        raise ConfigError(f"depths must lie in [0, 1], got {bad}")
    rng = random.Random(seed)
    drawn = [(rng.randint(KEY_MIN, KEY_MAX), float(depth_list[i % len(depth_list)])) for i in range(trials)]
    prompts = [passkey_prompt(tokenizer, length, depth, key) for key, depth in drawn]
    with eval_mode(model):
        predictions = generate_greedy(model, tokenizer, prompts, max_new_tokens, batch_size=batch_size,
                                      progress=progress)
    results = [PasskeyTrial(length, depth, key, pred, score_prediction(pred, key))
               for (key, depth), pred in zip(drawn, predictions)]
    accuracy = 100.0 * sum(t.correct for t in results) / len(results)
    return PasskeyResult(length=length, accuracy=accuracy, trials=results)
