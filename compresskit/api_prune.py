"""The pruning part of the Python API (re-exported by compresskit.api): configs, scores, the pass.

Composes compresskit.prune (scores, selection, surgery) with the eval room's passkey prompts (the
retrieval probes) and the calibration sources.
"""
from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn

from .api_kv import passkey_probes
from .api_models import calibration_ids
from .core.arch import get_arch
from .core.errors import InputError
from .prune import (
    PruneConfig, collect_importance, count_parameters, head_retrieval_scores, plan, prune_in_place,
)
from .prune import progress_units as _progress_units


def make_prune_config(config: PruneConfig | dict | None = None, **overrides: Any) -> PruneConfig:
    """A validated `PruneConfig` from a config, a dict and/or keyword overrides."""
    return PruneConfig.build(config, **overrides)


def prune_plan(model: nn.Module, config: PruneConfig) -> dict[str, Any]:
    """Exact kept counts for ``model`` (raises ConfigError naming the nearest valid setting)."""
    get_arch(model)
    return plan(config, model.config).to_dict()


def retrieval_probes(model: nn.Module, tokenizer: Any, config: PruneConfig) -> list:
    """Needle probes for retrieval-head scoring: the eval suite's passkey prompts at
    ``config.retrieval_length`` (capped at the model's context), keys drawn from a seed distinct from
    the evaluation's, the needle's key tokens as copy targets and the key as the teacher-forced answer."""
    return passkey_probes(model, tokenizer, config.retrieval_length, config.retrieval_samples, config.seed + 7919)


def prune_units(model: nn.Module, config: PruneConfig) -> int:
    """Progress units `prune` reports (calibration samples + retrieval probes)."""
    return _progress_units(config)


def parameter_count(model: nn.Module) -> int:
    """Parameters of ``model`` (a tied embedding / lm_head counted once)."""
    return count_parameters(model)


def prune_scores(model: nn.Module, config: PruneConfig | dict | None = None, *, tokenizer: Any = None,
                 calib: Any = None, probes: list | None = None, progress: Callable[..., None] | None = None,
                 **overrides: Any) -> dict[str, Any]:
    """The scores `prune` would compute (``{"importance": Importance, "retrieval": [layers, heads] or
    None}``), to prune several copies of one model at different settings without scoring again."""
    config = make_prune_config(config, **overrides)
    spec = get_arch(model)
    importance = collect_importance(model, spec, _calibration_ids(model, tokenizer, config, calib), progress=progress)
    retrieval = None
    if config.protect_retrieval:
        if probes is None and tokenizer is None:
            raise InputError("retrieval protection needs the tokenizer (prune(..., tokenizer=tok)) or probes")
        probes = probes if probes is not None else retrieval_probes(model, tokenizer, config)
        retrieval = head_retrieval_scores(model, spec, probes, config.retrieval_score, progress=progress)
    return {"importance": importance, "retrieval": retrieval}


def prune(
    model: nn.Module,
    config: PruneConfig | dict | None = None,
    *,
    tokenizer: Any = None,
    calib: Any = None,
    probes: list | None = None,
    scores: dict[str, Any] | None = None,
    progress: Callable[..., None] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Structurally prune ``model`` in place (MLP channels, attention heads, layers); returns the
    provenance record (kept indices, scores summary; ``save`` writes it as ``pruning.json`` and a summary
    into config.json). Calibration ``calib`` is a ``[n, seqlen]`` LongTensor or a source spec (see
    `quantize`); retrieval protection (on by default) scores heads on passkey ``probes`` (default:
    `retrieval_probes`). ``scores`` from `prune_scores` on the same unpruned model skips the scoring.
    The result saves as a plain float checkpoint that stock transformers loads.
    Also ``compresskit.prune_model`` (``compresskit.prune`` is the package)."""
    config = make_prune_config(config, **overrides)
    get_arch(model)
    plan(config, model.config)  # a bad ratio fails before any work
    pruning = config.mlp or config.heads or config.layers
    scores = scores or {}
    ids = None
    if pruning and scores.get("importance") is None:
        ids = _calibration_ids(model, tokenizer, config, calib)
    if pruning and config.needs_retrieval and probes is None and scores.get("retrieval") is None:
        if tokenizer is None:
            raise InputError("retrieval protection needs the tokenizer (prune(..., tokenizer=tok)) or probes")
        probes = retrieval_probes(model, tokenizer, config)
    return prune_in_place(model, config, ids, probes, progress=progress, importance=scores.get("importance"),
                          retrieval=scores.get("retrieval"))


def _calibration_ids(model: nn.Module, tokenizer: Any, config: PruneConfig, calib: Any):
    return calibration_ids(model, tokenizer, config, calib)
