"""Which units to keep, from scores (pure functions on tensors; no model here).

Heads are ranked within each KV group and the same number is kept in every group, so the result
is a standard GQA config. Protected heads (top retrieval heads) rank ahead of every unprotected head
of their group, ordered among themselves by their retrieval score (``priority``) when given, else by
the activation score; the unprotected rest by the activation score. A group with more protected
heads than slots keeps its best retrieval heads.
"""
from __future__ import annotations

import torch


def top_indices(scores: torch.Tensor, keep: int, protected: torch.Tensor | None = None,
                priority: torch.Tensor | None = None) -> torch.Tensor:
    """Sorted indices of the ``keep`` best entries: protected first (by ``priority``, else score), then by
    score (ties: the lower index)."""
    def key(i: int) -> tuple:
        prot = bool(protected[i]) if protected is not None else False
        pri = float(priority[i]) if prot and priority is not None else 0.0
        return (not prot, -pri, -float(scores[i]), i)

    order = sorted(range(len(scores)), key=key)
    return torch.tensor(sorted(order[:keep]), dtype=torch.long)


def protected_heads(retrieval: torch.Tensor, count: int) -> torch.Tensor:
    """``[layers, heads]`` bool mask of the ``count`` highest retrieval scores over the whole model."""
    flat = retrieval.flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if count > 0:
        mask[top_indices(flat, min(count, flat.numel()))] = True
    return mask.view_as(retrieval)


def keep_query_heads(scores: torch.Tensor, n_kv: int, keep_per_group: int, protected: torch.Tensor | None = None,
                     priority: torch.Tensor | None = None) -> torch.Tensor:
    """Sorted query-head indices of one layer: the top ``keep_per_group`` of each of the ``n_kv`` groups
    (group ``g`` is heads ``g*G .. g*G+G-1``)."""
    per_group = scores.numel() // n_kv

    def part(t: torch.Tensor | None, g: int) -> torch.Tensor | None:
        return None if t is None else t.view(n_kv, per_group)[g]

    kept = [g * per_group + top_indices(part(scores, g), keep_per_group, part(protected, g), part(priority, g))
            for g in range(n_kv)]
    return torch.cat(kept)


def keep_kv_groups(scores: torch.Tensor, n_kv: int, keep_groups: int, protected: torch.Tensor | None = None,
                   priority: torch.Tensor | None = None) -> torch.Tensor:
    """Sorted KV-group indices of one layer: groups ranked by the sum of their heads' scores, groups
    holding a protected head first (by their best protected head's ``priority``)."""
    per_group = scores.numel() // n_kv
    group_scores = scores.float().view(n_kv, per_group).sum(dim=1)
    group_protected = None if protected is None else protected.view(n_kv, per_group).any(dim=1)
    group_priority = None
    if protected is not None and priority is not None:
        group_priority = (priority.float() * protected.float()).view(n_kv, per_group).max(dim=1).values
    return top_indices(group_scores, keep_groups, group_protected, group_priority)


def heads_of_groups(groups: torch.Tensor, per_group: int) -> torch.Tensor:
    """Query-head indices of the given KV groups."""
    return torch.cat([g * per_group + torch.arange(per_group) for g in groups.tolist()]) if len(groups) else \
        torch.zeros(0, dtype=torch.long)


def layers_to_keep(influence: torch.Tensor, keep: int, protected: torch.Tensor | None = None) -> torch.Tensor:
    """Sorted indices of the ``keep`` layers with the highest block influence; layers flagged in
    ``protected`` (those holding a protected head) rank first."""
    return top_indices(influence, keep, protected)
