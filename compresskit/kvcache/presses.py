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

from ..core.errors import ConfigError


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
    q = q * cos.unsqueeze(1) + _rotate_half(q) * sin.unsqueeze(1)
    kv_heads = keys.shape[1]
    q = q.view(b, kv_heads, -1, w, head_dim)  # query heads grouped by their KV head
    logits = torch.einsum("bhgwd,bhtd->bhgwt", q.float(), keys.float()) / math.sqrt(head_dim)
    n = keys.shape[2]
    causal = torch.ones(w, w, dtype=torch.bool, device=keys.device).tril()
    mask = torch.ones(w, n, dtype=torch.bool, device=keys.device)
    mask[:, n - w:] = causal
    logits = logits.masked_fill(~mask, float("-inf"))
    return logits.softmax(dim=-1)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
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


PRESSES: dict[str, type[Press]] = {"random": RandomPress, "knorm": KnormPress, "streaming": StreamingLLMPress,
                                   "snapkv": SnapKVPress, "tova": TOVAPress}
PRESS_NAMES = {cls: name for name, cls in PRESSES.items()}


def keep_indices(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """``[batch, kv_heads, n_keep]`` indices of the best ``int(tokens * (1 - ratio))`` tokens (at least one)
    of every KV head, in their original order."""
    t = scores.shape[-1]
    n_keep = max(1, int(t * (1.0 - ratio)))
    return scores.topk(n_keep, dim=-1).indices.sort(dim=-1).values
