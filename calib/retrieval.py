"""Retrieval exercises for distillation data: facts hidden in a window of text, asked for at its end.

Distilling on ordinary prose never rewards copying a token from far back, and a student trained that
way can lose the long-range retrieval its parent had (passkey falls). `with_retrieval` turns a share
of the windows into exercises: k facts ("Note that the locker code of Maria is 48213.") are placed at
random depths of the window's own text and asked for again at its end ("Question: ... Answer: The
locker code of Maria is 48213."). The teacher answers them, so the KL on the answer tokens teaches the
student to retrieve. With ``repeat`` the haystack is one short passage of the window repeated, as in
passkey-style prompts: a student distilled on running prose alone can lose retrieval from repetitive
context while keeping it in prose. The wording, values, passages and filler differ from the passkey test
(compresskit.eval.passkey), which stays a held-out measurement.
"""
from __future__ import annotations

import random
from typing import Any

import torch

from ..core.errors import ConfigError, InputError

WHATS = ("locker code", "room number", "account number", "serial number", "ticket number", "order number")
NAMES = ("Maria", "Kenji", "Olga", "Tomas", "Aisha", "Pedro", "Ingrid", "Rahul", "Chen", "Fatima", "Lars", "Nadia",
         "Omar", "Elena", "Yusuf", "Greta", "Ravi", "Sofia", "Hugo", "Leila")
FACT = " Note that the {what} of {name} is {value}. "
QUESTION = "\nQuestion: What is the {what} of {name}? Answer: The {what} of {name} is {value}."
MAX_FACTS = 3


def _encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


REPEAT_SPAN = (16, 64)  # tokens in the passage a repeated haystack is made of


def retrieval_exercise(tokenizer: Any, window: torch.Tensor, rng: random.Random,
                       repeat: random.Random | None = None, depth: float = 1.0) -> torch.Tensor:
    """``window`` (1-D, L tokens) with 1-3 facts inserted at random depths of its first tokens and the
    questions with their answers appended; still exactly L tokens (the text's tail is dropped). With
    ``repeat`` (a generator of its own, so ``rng``'s draws stay those of a plain exercise) the text around
    the facts is one passage of 16-64 tokens of the window, chosen by it and repeated. ``depth`` < 1 puts
    the facts in that first share of the text only (far from the questions: a long window's longest
    distances)."""
    if window.dim() != 1:
        raise ValueError(f"a window is 1-D, got shape {tuple(window.shape)}")
    if not 0.0 < depth <= 1.0:
        raise ConfigError(f"depth={depth} must lie in (0, 1]: the share of the text the facts are hidden in")
    length = window.numel()
    k = rng.randint(1, MAX_FACTS)
    facts = [(w, n, str(rng.randint(10_000, 9_999_999))) for w, n in zip(rng.sample(WHATS, k), rng.sample(NAMES, k))]
    inserts = [_encode(tokenizer, FACT.format(what=w, name=n, value=v)) for w, n, v in facts]
    asked = rng.sample(facts, k)  # asked in another order than told
    tail = [t for w, n, v in asked for t in _encode(tokenizer, QUESTION.format(what=w, name=n, value=v))]
    n_text = length - len(tail) - sum(map(len, inserts))
    if n_text < length // 2:
        raise InputError(f"a {length}-token window is too short for retrieval exercises (need about "
                         f"{2 * (length - n_text)} tokens); use longer sequences or retrieval_mix=0")
    text = window[:n_text].tolist()
    if repeat is not None:
        span = repeat.randint(*REPEAT_SPAN)
        start = repeat.randint(0, n_text - span)
        text = (text[start:start + span] * (n_text // span + 1))[:n_text]
    cuts = sorted(rng.randint(0, round(depth * n_text)) for _ in inserts)
    out: list[int] = []
    prev = 0
    for cut, ids in zip(cuts, inserts):
        out += text[prev:cut] + ids
        prev = cut
    out += text[prev:] + tail
    return torch.tensor(out, dtype=window.dtype)


def with_retrieval(tokenizer: Any, windows: torch.Tensor, fraction: float, seed: int = 0,
                   repeat: float = 0.0, depth: float = 1.0) -> torch.Tensor:
    """``windows`` ([n, L]) with ``round(fraction * n)`` of them (chosen by ``seed``) made retrieval exercises,
    ``round(repeat * that)`` of those with a repeated haystack, their facts in the first ``depth`` of the text."""
    if not 0.0 <= fraction <= 1.0 or not 0.0 <= repeat <= 1.0:
        raise ConfigError(f"fraction={fraction} and repeat={repeat} must lie in [0, 1]")
    rng = random.Random(seed)
    n = windows.shape[0]
    chosen = rng.sample(range(n), round(fraction * n))
    passages = random.Random(seed + 1)  # its own draws: the exercises stay those of repeat=0, bar their haystacks
    repeated = set(passages.sample(chosen, round(repeat * len(chosen))))
    chosen = set(chosen)
    return torch.stack([retrieval_exercise(tokenizer, w, rng, repeat=passages if i in repeated else None, depth=depth)
                        if i in chosen else w for i, w in enumerate(windows)])
