"""`prune_in_place`: score, select and cut, in place, and say what was done (the provenance record)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn

from ..core.record import PassResult, record_of
from ..core.arch import get_arch
from ..core.errors import InputError
from ..core.version import __version__
from .apply import count_parameters, keep_layers, prune_attention, prune_mlp, update_shape
from .config import PruneConfig, PrunePlan, plan
from .importance import Importance, collect_importance
from .retrieval import RetrievalProbe, head_retrieval_scores
from .select import heads_of_groups, keep_kv_groups, keep_query_heads, layers_to_keep, protected_heads, top_indices


def progress_units(config: PruneConfig, nsamples: int | None = None) -> int:
    """Units `prune_in_place` reports: one per calibration sample and per retrieval probe."""
    if not (config.mlp or config.heads or config.layers):
        return 0
    return (nsamples or config.nsamples) + (config.retrieval_samples if config.needs_retrieval else 0)


def _head_choice(config: PruneConfig, p: PrunePlan, scores: torch.Tensor, protected: torch.Tensor | None,
                 priority: torch.Tensor | None):
    """(query heads, kv heads) kept in one layer."""
    if config.head_unit == "group":
        groups = keep_kv_groups(scores, p.n_kv_heads, p.keep_groups, protected, priority)
        return heads_of_groups(groups, p.n_heads // p.n_kv_heads), groups
    return (keep_query_heads(scores, p.n_kv_heads, p.keep_heads_per_group, protected, priority),
            torch.arange(p.n_kv_heads))


def prune_in_place(model: nn.Module, config: PruneConfig, ids: torch.Tensor | None,
                   probes: Sequence[RetrievalProbe] | None = None, *,
                   progress: Callable[..., None] | None = None, importance: Importance | None = None,
                   retrieval: torch.Tensor | None = None) -> dict[str, Any]:
    """Prune ``model`` in place as ``config`` says, scoring on calibration ``ids`` (``[n, seqlen]``) and,
    with retrieval protection, on ``probes``. Scores computed before on the same (unpruned) model can be
    passed as ``importance`` / ``retrieval`` (``[layers, heads]``) to skip the scoring passes (a sweep
    over settings scores once). Returns the full provenance record (also set as
    the model's record, ``compresskit.core.record``; its summary goes into ``model.config.compresskit_pruning``)."""
    spec = get_arch(model)
    p = plan(config, model.config)
    params_before = count_parameters(model)
    record: dict[str, Any] = {"compresskit_version": __version__, "recipe": config.to_dict(), "plan": p.to_dict(),
                              "params_before": params_before}
    if not (config.mlp or config.heads or config.layers):
        record.update(params_after=params_before, kept_layers=list(range(p.n_layers)))
        return _finish(model, record, {})
    if ids is None and importance is None:
        raise InputError("pruning needs calibration token ids ([nsamples, seqlen])")
    imp: Importance = importance if importance is not None else collect_importance(model, spec, ids, progress=progress)
    protected = None
    if config.needs_retrieval:
        if retrieval is None and not probes:
            raise InputError("retrieval protection needs needle probes; pass probes, or protect_retrieval=False")
        if retrieval is None:
            retrieval = head_retrieval_scores(model, spec, probes, config.retrieval_score, progress=progress)
        protected = protected_heads(retrieval, p.protected_heads)
        record["retrieval"] = _retrieval_summary(retrieval, protected)
    keep_l = torch.arange(p.n_layers) if not config.layers else layers_to_keep(
        imp.layers, p.keep_layers, None if protected is None else protected.any(dim=1))
    blocks = spec.blocks_of(model)
    kept_heads, kept_kv, kept_mlp = {}, {}, {}
    for i in keep_l.tolist():
        if config.heads:
            q, kv = _head_choice(config, p, imp.heads[i], None if protected is None else protected[i],
                                 None if protected is None else retrieval[i])
            prune_attention(blocks[i], spec, q, kv, p.head_dim)
            kept_heads[i], kept_kv[i] = q.tolist(), kv.tolist()
        if config.mlp:
            keep = top_indices(imp.mlp[i], p.keep_intermediate)
            prune_mlp(blocks[i], spec, keep)
            kept_mlp[i] = keep.tolist()
    filtered = keep_layers(model, spec, keep_l) if config.layers else []
    update_shape(model.config, n_heads=p.keep_heads, n_kv=p.keep_groups, head_dim=p.head_dim,
                 intermediate=p.keep_intermediate)
    if protected is not None:
        prot = protected.nonzero().tolist()
        record["retrieval"]["protected_kept"] = all(
            layer in keep_l.tolist() and (not config.heads or head in kept_heads[layer]) for layer, head in prot)
    record.update(params_after=count_parameters(model), kept_layers=keep_l.tolist(), filtered_config_lists=filtered,
                  kept_query_heads={str(k): v for k, v in kept_heads.items()},
                  kept_kv_heads={str(k): v for k, v in kept_kv.items()}, importance=imp.summary())
    return _finish(model, record, {str(k): v for k, v in kept_mlp.items()})


def _retrieval_summary(retrieval: torch.Tensor, protected: torch.Tensor) -> dict[str, Any]:
    flat = retrieval.flatten()
    order = sorted(range(flat.numel()), key=lambda j: -float(flat[j]))[:16]
    h = retrieval.shape[1]
    return {"protected": protected.nonzero().tolist(),
            "top_heads": [[j // h, j % h, round(float(flat[j]), 5)] for j in order],
            "mean_score": round(float(flat.mean()), 6)}


def _finish(model: nn.Module, record: dict[str, Any], kept_mlp: dict[str, list[int]]) -> dict[str, Any]:
    """Keep the record on the model (full) and its summary on the config (saved in config.json)."""
    summary = {k: v for k, v in record.items() if k != "importance"}
    model.config.compresskit_pruning = summary  # the pruned shape (kept layers), as config.json will hold it
    detail = {**record, "kept_mlp_channels": kept_mlp}
    record_of(model).passes.append(PassResult("prune", PruneConfig.from_dict(record["recipe"]).name, record["recipe"],
                                              summary, detail))
    return detail
