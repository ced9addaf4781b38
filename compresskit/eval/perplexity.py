"""Perplexity over non-overlapping fixed-length windows of a text.

The text is tokenized once (no special tokens) and cut into windows of exactly ``seqlen`` tokens
(the remainder is dropped). Every window predicts its ``seqlen - 1`` next tokens; the negative
log-likelihoods of all predicted tokens are summed in float64 and averaged, and ``ppl = exp(nll)``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..core.errors import ConfigError, InputError
from ._runtime import Progress, eval_mode, model_device, report


@dataclass
class PerplexityResult:
    """Outcome of one perplexity run at one window length."""

    ppl: float
    nll: float
    tokens: int
    windows: int
    seqlen: int

    def to_dict(self) -> dict:
        """Plain, JSON-friendly dict of the fields."""
        return asdict(self)


def encode_text(tokenizer: Any, text: str) -> torch.Tensor:
    """Token ids of ``text`` without special tokens, as a 1-D long tensor."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def num_windows(n_tokens: int, seqlen: int, max_windows: int | None = None) -> int:
    """How many full ``seqlen`` windows ``n_tokens`` tokens give, capped at ``max_windows``."""
    n = n_tokens // seqlen if seqlen > 0 else 0
    return n if max_windows is None else min(n, max_windows)


def check_perplexity_args(
    model: Any, n_tokens: int, seqlen: int, max_windows: int | None = None, batch_size: int = 1
) -> None:
    """Raise ``ValueError`` if a perplexity run with these numbers cannot work."""
    if seqlen < 2:
        raise ConfigError(f"seqlen={seqlen} is too small: a window needs at least 2 tokens to predict one")
    if max_windows is not None and max_windows < 1:
        raise ConfigError(f"max_windows={max_windows} must be >= 1 (or None for all windows)")
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be >= 1")
    max_pos = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if max_pos is not None and seqlen > max_pos:
        raise InputError(
            f"seqlen={seqlen} exceeds model.config.max_position_embeddings={max_pos}; "
            f"use seqlen <= {max_pos}"
        )
    if n_tokens < seqlen:
        raise InputError(
            f"text has only {n_tokens} tokens, fewer than seqlen={seqlen}, so not even one window fits; "
            f"pass a longer text (>= {seqlen} tokens) or a smaller seqlen"
        )


def _batch_nll_sum(model: Any, batch: torch.Tensor) -> float:
    """Sum (float64) of next-token NLLs over all predicted tokens of a ``[b, seqlen]`` batch."""
    logits = model(input_ids=batch, use_cache=False).logits
    total = torch.zeros((), dtype=torch.float64, device=logits.device)
    for row in range(batch.shape[0]):  # row by row keeps the float32 upcast of the logits small
        pred = logits[row, :-1, :].float()
        target = batch[row, 1:].to(logits.device)
        total += F.cross_entropy(pred, target, reduction="none").double().sum()
    return float(total)


def perplexity_ids(
    model: Any,
    ids: torch.Tensor,
    seqlen: int,
    *,
    max_windows: int | None = None,
    batch_size: int = 1,
    progress: Progress = None,
) -> PerplexityResult:
    """Perplexity of already-tokenized ``ids`` (1-D); see :func:`perplexity`."""
    ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
    check_perplexity_args(model, ids.numel(), seqlen, max_windows, batch_size)
    n = num_windows(ids.numel(), seqlen, max_windows)
    windows = ids[: n * seqlen].reshape(n, seqlen)
    device = model_device(model)
    nll_sum = 0.0
    with eval_mode(model):
        for start in range(0, n, batch_size):
            batch = windows[start : start + batch_size].to(device)
            nll_sum += _batch_nll_sum(model, batch)
            report(progress, batch.shape[0])
    tokens = n * (seqlen - 1)
    nll = nll_sum / tokens
    ppl = math.exp(nll) if nll < 700.0 else math.inf
    return PerplexityResult(ppl=ppl, nll=nll, tokens=tokens, windows=n, seqlen=seqlen)


def perplexity(
    model: Any,
    tokenizer: Any,
    text: str,
    seqlen: int,
    *,
    max_windows: int | None = None,
    batch_size: int = 1,
    progress: Progress = None,
) -> PerplexityResult:
    """Perplexity of ``model`` on ``text`` over non-overlapping windows of exactly ``seqlen`` tokens.

    Only the first ``max_windows`` windows are used when given; windows run ``batch_size`` at a
    time and ``progress`` is called with the number of windows each batch finished.
    Raises ``ValueError`` if the text is shorter than one window or ``seqlen`` exceeds
    ``model.config.max_position_embeddings``.
    """
    ids = encode_text(tokenizer, text)
    return perplexity_ids(
        model, ids, seqlen, max_windows=max_windows, batch_size=batch_size, progress=progress
    )
