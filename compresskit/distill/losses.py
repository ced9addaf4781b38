"""Distillation losses as pure functions of tensors (no model, no state).

- `token_kl`: forward KL(teacher || student) per token at a temperature;
- `head_losses`: the same (and next-token cross-entropy) from *final hidden states* and the two
  lm_heads, ``chunk`` positions at a time, each chunk recomputed in the backward pass, so neither
  model's full ``[seq, vocab]`` logits are ever held (49152 x 8192 x 4 bytes = 1.6 GB each for SmolLM2);
- `hidden_state_loss`: cosine or MSE between hidden states;
- `layer_map`: which teacher layer each student layer is compared with, following layer removal.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..core.errors import ConfigError, InputError
from .fused_head import IGNORE, fused_head_sums


def _check_pair(student: torch.Tensor, teacher: torch.Tensor, what: str) -> None:
    if student.shape != teacher.shape:
        raise ValueError(f"student and teacher {what} differ in shape: {tuple(student.shape)} vs "
                         f"{tuple(teacher.shape)}")


def token_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``T^2 * KL(softmax(t / T) || softmax(s / T))`` per position: ``[..., vocab]`` -> ``[...]``, float32.

    The T^2 factor keeps gradient magnitudes independent of T (Hinton et al. 2015)."""
    _check_pair(student_logits, teacher_logits, "logits")
    t = float(temperature)
    log_q = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1) * (t * t)


def next_token_labels(ids: torch.Tensor) -> torch.Tensor:
    """Labels aligned with positions: position i predicts ``ids[i + 1]``; the last position is ignored."""
    labels = torch.full_like(ids, IGNORE)
    labels[..., :-1] = ids[..., 1:]
    return labels


@dataclass
class HeadLossSums:
    """Sums over tokens (divide by the counts for means): KL over every position, CE over labelled ones."""

    kl: torch.Tensor
    ce: torch.Tensor
    kl_tokens: int
    ce_tokens: int

    def kl_mean(self) -> torch.Tensor:
        return self.kl / max(self.kl_tokens, 1)

    def ce_mean(self) -> torch.Tensor:
        return self.ce / max(self.ce_tokens, 1)


def _chunk_sums(student_head: Callable, teacher_head: Callable, temperature: float, with_ce: bool,
                sh: torch.Tensor, th: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s_logits = student_head(sh)
    with torch.no_grad():
        t_logits = teacher_head(th)
    kl = token_kl(s_logits, t_logits, temperature).sum()
    if not with_ce:
        return kl, kl.new_zeros(())
    ce = F.cross_entropy(s_logits.float().flatten(0, -2), labels.flatten(), ignore_index=IGNORE, reduction="sum")
    return kl, ce


def _plain_weight(head: Callable, hidden: torch.Tensor) -> torch.Tensor | None:
    """The ``[vocab, hidden]`` weight of a bias-free ``nn.Linear`` head held whole in this process (not a
    sharded / DTensor / quantized one), else None."""
    if not isinstance(head, nn.Linear) or head.bias is not None:
        return None
    w = head.weight
    if type(w.data) is not torch.Tensor or w.dim() != 2 or w.shape[1] != hidden.shape[-1] or not w.numel():
        return None
    return w


def head_losses(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    student_head: Callable[[torch.Tensor], torch.Tensor],
    teacher_head: Callable[[torch.Tensor], torch.Tensor],
    *,
    temperature: float = 1.0,
    labels: torch.Tensor | None = None,
    chunk: int = 1024,
    recompute: bool = True,
    fused: bool = True,
) -> HeadLossSums:
    """KL (and, with ``labels``, cross-entropy) sums from final hidden states ``[batch, seq, hidden]``.

    The heads map hidden states to logits (the models' lm_heads). ``chunk`` positions go through
    them at a time (0: all at once). When both heads are bias-free ``nn.Linear`` layers with whole
    (unsharded) weights and ``fused`` is on, `fused_head.fused_head_sums` forms the gradient in the
    forward pass (about half the work); otherwise autograd runs through the heads and, with
    ``recompute``, a chunk's logits are recomputed in the backward pass instead of kept, so peak
    memory is one chunk's logits. Either way the result equals the unchunked computation (up to
    float summation order)."""
    if student_hidden.shape[:2] != teacher_hidden.shape[:2]:
        raise ValueError(f"student and teacher hidden states cover different positions: "
                         f"{tuple(student_hidden.shape)} vs {tuple(teacher_hidden.shape)}")
    if labels is not None and labels.shape != student_hidden.shape[:2]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match positions {tuple(student_hidden.shape[:2])}")
    batch, seq = student_hidden.shape[:2]
    with_ce = labels is not None
    ce_tokens = int((labels != IGNORE).sum()) if with_ce else 0
    ws, wt = _plain_weight(student_head, student_hidden), _plain_weight(teacher_head, teacher_hidden)
    if fused and ws is not None and wt is not None and ws.shape == wt.shape:
        kl, ce = fused_head_sums(student_hidden, teacher_hidden, ws, wt, temperature=temperature, labels=labels,
                                 chunk=chunk)
        return HeadLossSums(kl, ce, batch * seq, ce_tokens)
    lab = labels if with_ce else torch.full((batch, seq), IGNORE, dtype=torch.long, device=student_hidden.device)
    step = seq if chunk <= 0 else chunk
    kl_sum = ce_sum = None
    for start in range(0, seq, step):
        args = (student_hidden[:, start:start + step], teacher_hidden[:, start:start + step],
                lab[:, start:start + step])
        if recompute and torch.is_grad_enabled() and student_hidden.requires_grad:
            kl, ce = checkpoint(_chunk_sums, student_head, teacher_head, temperature, with_ce, *args,
                                use_reentrant=False)
        else:
            kl, ce = _chunk_sums(student_head, teacher_head, temperature, with_ce, *args)
        kl_sum = kl if kl_sum is None else kl_sum + kl
        ce_sum = ce if ce_sum is None else ce_sum + ce
    return HeadLossSums(kl_sum, ce_sum, batch * seq, ce_tokens)


def hidden_state_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Mean over positions of ``1 - cos(s, t)`` (``cosine``) or of the per-position mean squared error
    (``mse``) between hidden states ``[..., hidden]``; the teacher side carries no gradient."""
    _check_pair(student, teacher, "hidden states")
    s, t = student.float(), teacher.detach().float()
    if kind == "cosine":
        return (1 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)).mean()
    if kind == "mse":
        return (s - t).pow(2).mean(dim=-1).mean()
    raise ConfigError(f"hidden loss {kind!r} is not supported; use cosine or mse")


def layer_map(n_student: int, n_teacher: int, kept_layers: Sequence[int] | None = None,
              layers: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """``[(student layer, teacher layer), ...]`` for the student layers ``layers`` (default all).

    ``kept_layers`` (a pruned model's ``config.compresskit_pruning["kept_layers"]``) lists, for every
    student layer, the teacher layer it was cut from; without it the depths must match."""
    if kept_layers is None:
        if n_student != n_teacher:
            raise InputError(f"the student has {n_student} layers and the teacher {n_teacher}, and the student "
                             "records no kept_layers (config.compresskit_pruning); use hidden_weight=0 or a "
                             "student pruned by compresskit")
        kept = list(range(n_student))
    else:
        kept = [int(i) for i in kept_layers]
        if len(kept) != n_student:
            raise InputError(f"kept_layers lists {len(kept)} layers but the student has {n_student}: the record "
                             "does not describe this student")
        if any(b <= a for a, b in zip(kept, kept[1:])) or (kept and (kept[0] < 0 or kept[-1] >= n_teacher)):
            raise InputError(f"kept_layers={kept} must increase within the teacher's {n_teacher} layers")
    chosen = list(range(n_student)) if not layers else [int(i) for i in layers]
    bad = [i for i in chosen if not 0 <= i < n_student]
    if bad:
        raise ConfigError(f"hidden_layers {bad} are outside the student's {n_student} layers (0..{n_student - 1})")
    return [(i, kept[i]) for i in chosen]
