"""`PruneConfig`: the typed, versioned recipe of a structured-pruning pass, and its check against a
model's shape (`plan`), which turns ratios into exact counts or names the nearest valid setting.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ..core.config import ConfigError, JsonConfig

PRUNE_CONFIG_VERSION = 1
HEAD_UNITS = ("query", "group")
RETRIEVAL_SCORES = ("attention", "answer_loss")


@dataclass(frozen=True)
class PruneConfig(JsonConfig):
    """What to remove and how to score it.

    - ``mlp``: fraction of MLP intermediate channels to remove, in [0, 1).
    - ``heads``: fraction of attention heads to remove, in [0, 1). With ``head_unit="query"`` (default)
      query heads are removed uniformly within each KV group (so ``heads * n_heads`` must be a
      multiple of ``n_kv_heads``); with ``"group"`` whole KV groups (their K/V head and query heads) go.
    - ``layers``: number of decoder layers to remove (lowest block influence first).
    - ``nsamples`` x ``seqlen`` tokens from ``calib`` score channels, heads and layers (Minitron).
    - ``protect_retrieval``: also score heads on needle copying in passkey prompts of
      ``retrieval_length`` tokens (``retrieval_samples`` prompts) and keep the top ones.
    - ``protect_fraction``: the share of all query heads (rounded up, at least one) that is protected;
      the default 0.05 follows Wu et al. (retrieval heads are under 5% of heads): 14 of SmolLM2-135M's
      270. Protected heads rank first within their KV group, so pruning stays uniform per group.
    - ``retrieval_score``: how heads are scored on the probes: ``"attention"`` (the attention mass a
      head puts on the needle token it copies; Wu et al. 2024) or ``"answer_loss"`` (how much the
      answer's teacher-forced loss rises when the head is removed, to first order: head-mask
      gradients, Michel et al. 2019; it also finds the heads that prepare the copy).
    - ``extra``: free-form JSON-able notes carried with the recipe.
    """

    mlp: float = 0.0
    heads: float = 0.0
    layers: int = 0
    head_unit: str = "query"
    nsamples: int = 32
    seqlen: int = 2048
    calib: str = "builtin"
    seed: int = 0
    protect_retrieval: bool = True
    protect_fraction: float = 0.05
    retrieval_length: int = 2048
    retrieval_samples: int = 8
    retrieval_score: str = "answer_loss"
    version: int = PRUNE_CONFIG_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("mlp", "heads"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ConfigError(f"{name}={value!r} must be a fraction in [0, 1) (e.g. --{name} 0.25)")
        if not isinstance(self.layers, int) or self.layers < 0:
            raise ConfigError(f"layers={self.layers!r} must be a whole number of layers >= 0")
        if self.head_unit not in HEAD_UNITS:
            raise ConfigError(f"head_unit={self.head_unit!r} is not supported; use one of {', '.join(HEAD_UNITS)}")
        for name in ("nsamples", "retrieval_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be positive")
        for name in ("seqlen", "retrieval_length"):
            if getattr(self, name) < 16:
                raise ConfigError(f"{name}={getattr(self, name)} must be at least 16 tokens")
        if self.retrieval_score not in RETRIEVAL_SCORES:
            raise ConfigError(f"retrieval_score={self.retrieval_score!r} is not supported; use one of "
                              f"{', '.join(RETRIEVAL_SCORES)}")
        if not 0.0 <= self.protect_fraction < 1.0:
            raise ConfigError(f"protect_fraction={self.protect_fraction} must lie in [0, 1)")

    @property
    def name(self) -> str:
        """Short human name, e.g. ``prune-mlp25-heads33-l4`` (``-noprotect`` without protection)."""
        parts = [f"mlp{round(self.mlp * 100)}" if self.mlp else "",
                 f"{'groups' if self.head_unit == 'group' else 'heads'}{round(self.heads * 100)}" if self.heads else "",
                 f"l{self.layers}" if self.layers else ""]
        tail = "-noprotect" if (self.heads or self.layers) and not self.protect_retrieval else ""
        return "prune-" + ("-".join(p for p in parts if p) or "none") + tail

    @property
    def needs_retrieval(self) -> bool:
        """Retrieval scores are used when heads or layers (and with them their heads) are removed."""
        return self.protect_retrieval and (self.heads > 0 or self.layers > 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PruneConfig":
        cls.check_dict(d, "pruning recipe", PRUNE_CONFIG_VERSION)
        return cls(**d)



@dataclass(frozen=True)
class PrunePlan:
    """Exact counts for one model: how many of each unit are kept."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate: int
    keep_layers: int
    keep_heads_per_group: int
    keep_groups: int
    keep_intermediate: int
    protected_heads: int

    @property
    def keep_heads(self) -> int:
        return self.keep_groups * self.keep_heads_per_group

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"keep_heads": self.keep_heads}


def _fmt(r: float) -> str:
    return f"{r:.2f}".rstrip("0").rstrip(".") if r else "0"


def _valid_ratios(total: int, step: int) -> list[float]:
    """Ratios that remove a multiple of ``step`` out of ``total`` and leave at least one unit."""
    return [k * step / total for k in range(0, total // step)]


def _nearest(ratio: float, options: list[float]) -> float:
    return min(options, key=lambda r: (abs(r - ratio), r))


def _loads(model_config: Any, n_heads: int, n_kv: int, head_dim: int) -> bool:
    """Whether stock transformers accepts a config of this family with these head counts (some
    families also require hidden_size % num_attention_heads == 0, even with head_dim explicit)."""
    if model_config is None or not hasattr(model_config, "to_dict"):
        return True
    d = {k: v for k, v in model_config.to_dict().items() if k not in ("transformers_version", "model_type")}
    d.update(num_attention_heads=n_heads, num_key_value_heads=n_kv, head_dim=head_dim)
    try:
        type(model_config)(**d)
    except Exception:  # noqa: BLE001 - any validation failure means "would not load"
        return False
    return True


def head_counts(config: PruneConfig, n_heads: int, n_kv: int, model_config: Any = None,
                head_dim: int = 0) -> tuple[int, int]:
    """``(keep_heads_per_group, keep_groups)`` for ``config.heads``, or a ConfigError naming the nearest
    valid ratio (when the removal is not whole per group, would leave no head, or gives a head count
    that stock transformers refuses for this family)."""
    per_group = n_heads // n_kv
    if config.head_unit == "group":
        def counts(removed_groups: int) -> tuple[int, int]:
            return per_group * (n_kv - removed_groups), n_kv - removed_groups
        valid = [r for r in _valid_ratios(n_kv, 1) if _loads(model_config, *counts(round(r * n_kv)), head_dim)]
        removed = round(config.heads * n_kv)
        if removed >= n_kv or not _loads(model_config, *counts(removed), head_dim):
            why = (f"removes all {n_kv} KV groups" if removed >= n_kv else
                   f"leaves {counts(removed)[0]} query heads, which {type(model_config).__name__} does not accept")
            raise ConfigError(f"--heads {config.heads} (whole KV groups) {why}; the nearest valid setting is "
                              f"--heads {_fmt(_nearest(config.heads, valid))}; valid: "
                              f"{', '.join(_fmt(r) for r in valid)}")
        return per_group, n_kv - removed
    removed = round(config.heads * n_heads)
    valid = [r for r in _valid_ratios(n_heads, n_kv)
             if _loads(model_config, n_heads - round(r * n_heads), n_kv, head_dim)]
    if removed >= n_heads or removed % n_kv or not _loads(model_config, n_heads - removed, n_kv, head_dim):
        best = _nearest(config.heads, valid)
        why = ("leaves no query head" if removed >= n_heads else
               f"removes {removed} of {n_heads} query heads, not a whole number per each of the {n_kv} KV groups"
               if removed % n_kv else
               f"leaves {n_heads - removed} query heads, which {type(model_config).__name__} does not accept "
               f"(hidden_size must be a multiple of num_attention_heads)")
        raise ConfigError(f"--heads {config.heads} {why}; the nearest valid setting is --heads {_fmt(best)} "
                          f"({round(best * n_heads)} heads, {round(best * n_heads) // n_kv} per group); valid: "
                          f"{', '.join(_fmt(r) for r in valid)}")
    return per_group - removed // n_kv, n_kv


def protected_count(config: PruneConfig, n_heads_total: int) -> int:
    """Heads protected over the whole model: ``ceil(protect_fraction * heads)``, at least 1 when on."""
    if not config.needs_retrieval:
        return 0
    return max(1, math.ceil(round(config.protect_fraction * n_heads_total, 6)))


def plan(config: PruneConfig, model_config: Any) -> PrunePlan:
    """Check ``config`` against a transformers config and return exact counts."""
    n_layers = model_config.num_hidden_layers
    n_heads = model_config.num_attention_heads
    n_kv = getattr(model_config, "num_key_value_heads", None) or n_heads
    head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // n_heads
    inter = model_config.intermediate_size
    if config.layers >= n_layers:
        raise ConfigError(f"--layers {config.layers} would remove every layer of a {n_layers}-layer model; "
                          f"the most is --layers {n_layers - 1}")
    per_group, groups = head_counts(config, n_heads, n_kv, model_config, head_dim)
    keep_inter = inter - round(config.mlp * inter)
    if keep_inter < 1:
        raise ConfigError(f"--mlp {config.mlp} leaves no MLP channel of {inter}; use --mlp {_fmt((inter - 1) / inter)} "
                          "or less")
    keep_layers = n_layers - config.layers
    return PrunePlan(n_layers, n_heads, n_kv, head_dim, inter, keep_layers, per_group, groups, keep_inter,
                     protected_count(config, n_heads * n_layers))
