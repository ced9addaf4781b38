"""Eviction presses: which cached tokens each KV head keeps after prefill.

Each press is a small frozen dataclass with one `score()`, as in NVIDIA kvpress: given the attention
module, the prefill's hidden states, its RoPE ``(cos, sin)`` and the layer's cached keys / values
``[batch, kv_heads, tokens, head_dim]``, it returns ``[batch, kv_heads, tokens]`` scores; the cache then
keeps the ``int(tokens * (1 - ratio))`` best tokens of every KV head, in their original order (`keep_indices`).
Scores are pure functions of tensors: the tests check each against a hand-computed reference.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..core.errors import ConfigError, InputError


def _check_ratio(ratio: float) -> None:
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0.0 <= ratio < 1.0:
        raise ConfigError(f"ratio={ratio!r} must lie in [0, 1): the share of the cached tokens each head drops "
                          "(0.5 keeps half)")


@dataclass(frozen=True)
class Press(ABC):
    """Base of the presses: ``ratio`` is the share of the prefilled tokens each KV head drops."""

    ratio: float = 0.5

    def __post_init__(self) -> None:
        _check_ratio(self.ratio)

    @property
    def name(self) -> str:
        return f"{PRESS_NAMES[type(self)]}:{self.ratio:g}"

    @abstractmethod
    def score(self, module: Any, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
              keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``[batch, kv_heads, tokens]`` scores of the cached tokens: the highest are kept."""

    def check_ready(self) -> None:
        """Raise `ConfigError` if the press lacks something it needs before it can run (nothing by default)."""

    def keep(self, scores: torch.Tensor, layer: int, n_layers: int) -> torch.Tensor | list[torch.Tensor]:
        """Which tokens layer ``layer`` keeps: ``[batch, kv_heads, n]`` (one count for every head; the default,
        the best ``int(tokens * (1 - ratio))``) or a list of ``[n_h]`` per KV head (per-head budgets)."""
        return keep_indices(scores, self.ratio)


@dataclass(frozen=True)
class RandomPress(Press):
    """A floor: random scores (seeded, so runs repeat)."""

    seed: int = 0

    def score(self, module, hidden_states, position_embeddings, keys, values):
        g = torch.Generator().manual_seed(self.seed + 7919 * int(getattr(module, "layer_idx", 0) or 0))
        return torch.rand(keys.shape[:3], generator=g).to(keys.device)


@dataclass(frozen=True)
class KnormPress(Press):
    """A floor: keys with a small norm draw the most attention (Devoto et al. 2024), so the score is -||k||."""

    def score(self, module, hidden_states, position_embeddings, keys, values):
        return -keys.float().norm(dim=-1)


@dataclass(frozen=True)
class StreamingLLMPress(Press):
    """StreamingLLM (Xiao et al. 2023): the first ``n_sink`` tokens (attention sinks) and the most recent ones."""

    n_sink: int = 4

    def score(self, module, hidden_states, position_embeddings, keys, values):
        b, h, t, _ = keys.shape
        score = torch.arange(t, dtype=torch.float32, device=keys.device).expand(b, h, t).clone()
        score[..., : self.n_sink] = float(t)  # sinks outrank every recent token
        return score


def window_attention(module: Any, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                     keys: torch.Tensor, window: int) -> torch.Tensor:
    """Softmax attention of the last ``window`` queries to every cached key, ``[batch, kv_heads, group, window,
    tokens]``: the queries are rebuilt from the hidden states (q_proj + RoPE, as the layer computed them), the
    window's own part causal. Works under sdpa, which returns no attention weights."""
    b, t, _ = hidden_states.shape
    w = min(window, t)
    head_dim = keys.shape[-1]
    q = module.q_proj(hidden_states[:, -w:]).view(b, w, -1, head_dim).transpose(1, 2)  # [b, hq, w, d]
    cos, sin = (p[:, -w:] for p in position_embeddings)
    q = q * cos.unsqueeze(1) + rotate_half(q) * sin.unsqueeze(1)
    kv_heads = keys.shape[1]
    q = q.view(b, kv_heads, -1, w, head_dim)  # query heads grouped by their KV head
    logits = torch.einsum("bhgwd,bhtd->bhgwt", q.float(), keys.float()) / math.sqrt(head_dim)
    n = keys.shape[2]
    causal = torch.ones(w, w, dtype=torch.bool, device=keys.device).tril()
    mask = torch.ones(w, n, dtype=torch.bool, device=keys.device)
    mask[:, n - w:] = causal
    logits = logits.masked_fill(~mask, float("-inf"))
    return logits.softmax(dim=-1)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """transformers' RoPE helper: ``(-x2, x1)`` for the two halves of the last dimension."""
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


@dataclass(frozen=True)
class SnapKVPress(Press):
    """SnapKV (Li et al. 2024): the last ``window`` queries vote on the context; their attention, averaged
    over the window and the query heads of each GQA group, is smoothed by average pooling of width
    ``kernel``; the window itself is always kept."""

    window: int = 64
    kernel: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window < 1 or self.kernel < 1 or self.kernel % 2 == 0:
            raise ConfigError(f"snapkv: window={self.window} must be >= 1 and kernel={self.kernel} odd and >= 1")

    def score(self, module, hidden_states, position_embeddings, keys, values):
        attn = window_attention(module, hidden_states, position_embeddings, keys, self.window)
        score = attn.mean(dim=(2, 3))  # [b, kv_heads, tokens]
        if self.kernel > 1:
            b, h, t = score.shape
            score = F.avg_pool1d(score.reshape(b * h, 1, t), self.kernel, stride=1, padding=self.kernel // 2,
                                 count_include_pad=False).reshape(b, h, t)
        w = min(self.window, keys.shape[2])
        score[..., -w:] = score.max() + 1  # the observation window stays
        return score


@dataclass(frozen=True)
class TOVAPress(Press):
    """TOVA (Oren et al. 2024): the last token's attention, averaged over the query heads of each GQA group;
    the last token stays."""

    def score(self, module, hidden_states, position_embeddings, keys, values):
        score = window_attention(module, hidden_states, position_embeddings, keys, 1).mean(dim=(2, 3))
        score[..., -1] = score.max() + 1
        return score


@dataclass(frozen=True)
class RetrievalHeadsPress(Press):
    """Head-level budgets (DuoAttention / Task-KV style, with the heads found by compresskit's retrieval-head
    scorer instead of trained gates): the KV heads in ``heads`` (``(layer, kv_head)`` pairs) keep every token;
    the others keep ``n_sink`` sinks and the most recent tokens, as many as leaves the whole cache holding
    ``1 - ratio`` of its tokens. ``share`` is the part of that budget given to retrieval heads when the API
    picks them (`compresskit.compress_kv(model, "retrieval-heads:0.5", tokenizer=tok)` scores the heads)."""

    heads: tuple = ()
    share: float = 0.5
    n_sink: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.share <= 1.0:
            raise ConfigError(f"retrieval-heads: share={self.share} must lie in [0, 1] (the part of the kept "
                              "budget that goes to retrieval heads)")
        object.__setattr__(self, "heads", tuple(tuple(int(x) for x in pair) for pair in self.heads))
        if any(len(pair) != 2 for pair in self.heads):
            raise ConfigError("retrieval-heads: heads must be (layer, kv_head) pairs")

    def score(self, module, hidden_states, position_embeddings, keys, values):
        return StreamingLLMPress.score(self, module, hidden_states, position_embeddings, keys, values)

    def check_ready(self) -> None:
        if not self.heads:
            raise ConfigError("retrieval-heads needs the model's retrieval heads: use compresskit.compress_kv(model, "
                              "'retrieval-heads:0.5', tokenizer=tok), which scores them")

    def keep(self, scores, layer, n_layers):
        self.check_ready()
        b, h, t = scores.shape
        total, full = n_layers * h, len(self.heads)
        others = max(0.0, ((1.0 - self.ratio) * total - full) / max(1, total - full))
        n_other = max(min(self.n_sink + 1, t), int(t * others))
        recent = scores.topk(n_other, dim=-1).indices.sort(dim=-1).values[0]
        everything = torch.arange(t, device=scores.device)
        return [everything if (layer, i) in self.heads else recent[i] for i in range(h)]


PRESSES: dict[str, type[Press]] = {"random": RandomPress, "knorm": KnormPress, "streaming": StreamingLLMPress,
                                   "snapkv": SnapKVPress, "tova": TOVAPress, "retrieval-heads": RetrievalHeadsPress}
PRESS_NAMES = {cls: name for name, cls in PRESSES.items()}


def adaptive_keep(scores: torch.Tensor, ratio: float, floor: float = 0.2) -> list[torch.Tensor]:
    """AdaKV (Feng et al. 2024) budgets for one layer (batch 1): the layer keeps ``int(tokens * (1 - ratio))``
    tokens per KV head on average, chosen by one top-k over the scores of all its heads, so a head whose
    attention is concentrated gives budget to one that spreads it; each head keeps at least ``floor`` of its
    even share. Returns ``[n_h]`` indices per head, in order. Scores must be comparable across heads
    (attention probabilities: snapkv, tova)."""
    if scores.shape[0] != 1:
        raise InputError("per-head KV budgets work on one sequence at a time (batch size 1); generate one prompt "
                         "at a time or use a uniform policy (snapkv:0.5)")
    _, h, t = scores.shape
    n_keep = max(1, int(t * (1.0 - ratio)))
    guaranteed = max(1, int(n_keep * floor))
    s = scores[0].float().clone()
    s.scatter_(1, s.topk(guaranteed, dim=-1).indices, float("inf"))  # every head's floor first
    chosen = s.flatten().topk(n_keep * h).indices
    head, token = chosen // t, chosen % t
    return [token[head == i].sort().values for i in range(h)]


def keep_indices(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """``[batch, kv_heads, n_keep]`` indices of the best ``int(tokens * (1 - ratio))`` tokens (at least one)
    of every KV head, in their original order."""
    return keep_top(scores, max(1, int(scores.shape[-1] * (1.0 - ratio))))


def keep_top(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """``[batch, kv_heads, n_keep]`` indices of the ``n_keep`` best tokens of every KV head, in order."""
    return scores.topk(min(n_keep, scores.shape[-1]), dim=-1).indices.sort(dim=-1).values
