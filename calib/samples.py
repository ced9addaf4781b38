"""Calibration batches: tokenize a source into one token stream and cut random fixed-length windows from it."""
from __future__ import annotations

import math
import random
import warnings
from typing import Any

import torch

from ..core.errors import ConfigError, InputError
from .source import CalibSource, parse_source
from .texts import dataset_texts, load_texts, take_tokens

DEFAULT_GEN_TOKENS = 512  # longest text sampled per sequence for the "generated" source (capped at seqlen)
GEN_SLACK = 1.1  # generate 10% more than nsamples * seqlen tokens: early EOS and re-tokenization lose some


def token_stream(tokenizer: Any, texts: list[str]) -> torch.LongTensor:
    """Tokenize each document separately (no special tokens) and concatenate, with EOS between documents.

    Empty documents are skipped; without an EOS token the documents are simply concatenated.
    """
    docs = [t for t in texts if t]
    encoded = tokenizer(docs, add_special_tokens=False, verbose=False)["input_ids"] if docs else []
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for ids in encoded:
        if not ids:
            continue
        if stream and eos is not None:
            stream.append(eos)
        stream.extend(ids)
    return torch.tensor(stream, dtype=torch.long)


def _generation_plan(nsamples: int, seqlen: int) -> tuple[int, int]:
    """``(n_generated, gen_tokens)`` that cover ``nsamples * seqlen`` tokens at least once, with some slack."""
    gen_tokens = min(DEFAULT_GEN_TOKENS, seqlen)
    n_generated = math.ceil(GEN_SLACK * nsamples * seqlen / gen_tokens)
    return n_generated, gen_tokens


def _source_texts(tokenizer: Any, src: CalibSource, nsamples: int, seqlen: int, seed: int, model: Any) -> list[str]:
    """The documents of ``src``; for ``generated``, enough model samples to fill the requested windows; an
    ``hf`` dataset is streamed only as far as those windows need."""
    if src.kind == "hf":
        return load_texts(src, tokenizer=tokenizer, want_tokens=math.ceil(GEN_SLACK * nsamples * seqlen))
    if src.kind != "generated":
        return load_texts(src)
    n_generated, gen_tokens = _generation_plan(nsamples, seqlen)
    return load_texts(src, model=model, tokenizer=tokenizer, n_generated=n_generated, gen_tokens=gen_tokens, seed=seed)


def sample_windows(stream: torch.Tensor, nsamples: int, seqlen: int, seed: int = 0) -> torch.LongTensor:
    """``nsamples`` windows of exactly ``seqlen`` tokens at offsets drawn from ``random.Random(seed)``."""
    rng = random.Random(seed)
    last = stream.numel() - seqlen
    offsets = [rng.randint(0, last) for _ in range(nsamples)]
    return torch.stack([stream[o : o + seqlen] for o in offsets]).long()


def in_memory_texts(source: Any, want_tokens: int, tokenizer: Any) -> list[str] | None:
    """The documents of an in-memory source - a list of strings, or a ``datasets.Dataset`` /
    ``IterableDataset`` (its ``text`` column, else its only string column), read only as far as
    ``want_tokens`` need - or None when ``source`` is a spec."""
    if isinstance(source, (str, CalibSource)):
        return None
    if isinstance(source, (list, tuple)):
        bad = [type(t).__name__ for t in source if not isinstance(t, str)]
        if bad:
            raise InputError(f"calibration texts must be strings, got {sorted(set(bad))}")
        return take_tokens(source, want_tokens, tokenizer)
    if hasattr(source, "column_names") or hasattr(source, "features"):
        return dataset_texts(source, want_tokens, tokenizer, what="the calibration dataset")
    raise InputError(f"calibration data must be a source spec (builtin, file:PATH, generated, hf:NAME), a list of "
                     f"strings, a datasets.Dataset or a LongTensor of token ids; got {type(source).__name__}")


def build_samples(
    tokenizer: Any,
    source: Any,
    nsamples: int,
    seqlen: int,
    *,
    seed: int = 0,
    model: Any = None,
) -> torch.LongTensor:
    """A ``[nsamples, seqlen]`` long tensor of calibration windows drawn from ``source`` (deterministic per seed).

    Raises `ConfigError` when ``nsamples < 1`` or ``seqlen < 2``, `InputError` when the source has fewer than ``seqlen`` tokens.
    Warns once when ``nsamples * seqlen`` exceeds the token stream (windows then overlap).
    ``model`` is needed only for the ``"generated"`` source.
    """
    if nsamples < 1:
        raise ConfigError(f"nsamples must be >= 1, got {nsamples}")
    if seqlen < 2:
        raise ConfigError(f"seqlen must be >= 2, got {seqlen}")
    texts = in_memory_texts(source, math.ceil(GEN_SLACK * nsamples * seqlen), tokenizer)
    src = parse_source(source) if texts is None else f"<{type(source).__name__} of {len(texts)} texts>"
    if texts is None:
        texts = _source_texts(tokenizer, src, nsamples, seqlen, seed, model)
    stream = token_stream(tokenizer, texts)
    n_tokens = stream.numel()
    if n_tokens < seqlen:
        raise InputError(
            f"calibration source {src} has only {n_tokens} tokens, fewer than seqlen={seqlen}; "
            f"use a longer source or a smaller seqlen"
        )
    if nsamples * seqlen > n_tokens:
        warnings.warn(
            f"calibration source {src} has {n_tokens} tokens, fewer than nsamples*seqlen = "
            f"{nsamples}*{seqlen} = {nsamples * seqlen}; calibration windows will overlap",
            stacklevel=2,
        )
    return sample_windows(stream, nsamples, seqlen, seed)
