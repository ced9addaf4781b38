"""Learnable weight clipping (LWC): per (row, group) clipping factors through a sigmoid.

``xmax = sigmoid(up) * max(W_g)``, ``xmin = sigmoid(low) * min(W_g)`` (asymmetric), or
``xmax = sigmoid(up) * absmax(W_g)`` (symmetric); factors start at 4.0 (sigmoid = 0.982), or, with
``clip_init="search"``, at the ratio per (row, group) that `search_clip` finds on the inputs' Gram matrix.
"""
from __future__ import annotations

import math

import torch

from ...core.formats import GPTQPacked
from ...core.manifest import LinearEntry
from ...core.quant_math import SCALE_MIN, fake_quantize_ste, group_minmax, num_groups, quantize

LWC_INIT = 4.0
SCALE_MAX = 1e4


def init_factors(out_features: int, in_features: int, group_size: int, value: float = LWC_INIT) -> dict[str, torch.Tensor]:
    shape = (out_features, num_groups(in_features, group_size))
    return {"up": torch.full(shape, value), "low": torch.full(shape, value)}


def lwc_qparams(
    w: torch.Tensor, up: torch.Tensor, low: torch.Tensor, bits: int, group_size: int, sym: bool,
    fp16_scale: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (differentiable in ``w``, ``up``, ``low``) and integer zero point, ``[out, groups]`` each.
    ``fp16_scale`` rounds the scale to its storage type before the zero point is derived from it."""
    maxq = 2**bits - 1
    wmin, wmax = group_minmax(w, group_size)
    if sym:
        xmax = torch.sigmoid(up) * torch.maximum(wmax.abs(), wmin.abs())
        scale = (2 * xmax / maxq).clamp(SCALE_MIN, SCALE_MAX)
        scale = scale.half().float() if fp16_scale else scale
        return scale, torch.full_like(scale, (maxq + 1) // 2)
    xmax = torch.sigmoid(up) * wmax
    xmin = torch.sigmoid(low) * wmin
    scale = ((xmax - xmin) / maxq).clamp(SCALE_MIN, SCALE_MAX)
    scale = scale.half().float() if fp16_scale else scale
    zero = torch.round(-xmin / scale).clamp(0, maxq).detach()
    return scale, zero


def lwc_fake_quantize(w: torch.Tensor, up: torch.Tensor, low: torch.Tensor, entry: LinearEntry) -> torch.Tensor:
    """Quantize-dequantize ``w`` with the learned clipping (straight-through rounding)."""
    scale, zero = lwc_qparams(w, up, low, entry.bits, entry.group_size, entry.sym)
    return fake_quantize_ste(w, scale, zero, entry.bits, entry.group_size)


@torch.no_grad()
def lwc_pack(w: torch.Tensor, up: torch.Tensor, low: torch.Tensor, entry: LinearEntry) -> GPTQPacked:
    """Final integer codes with the learned clipping; the scale is rounded to fp16 (its storage type)
    before the codes and zero points are computed, so the stored weights dequantize exactly."""
    w = w.float()
    scale, zero = lwc_qparams(w, up.float(), low.float(), entry.bits, entry.group_size, entry.sym, fp16_scale=True)
    zero = zero.to(torch.int32)
    q = quantize(w, scale, zero, entry.bits, entry.group_size)
    return GPTQPacked.pack(q, scale, zero, entry.bits, entry.group_size)


def group_blocks(gram: torch.Tensor, group_size: int) -> torch.Tensor:
    """The diagonal blocks ``[groups, gs, gs]`` of an input Gram matrix ``[in, in]`` (a ragged last group is
    padded with zeros: its padding columns carry no error)."""
    in_f = gram.shape[0]
    gs = in_f if group_size == -1 else group_size
    groups = num_groups(in_f, group_size)
    pad = groups * gs - in_f
    g = torch.nn.functional.pad(gram, (0, pad, 0, pad)) if pad else gram
    return torch.stack([g[i * gs:(i + 1) * gs, i * gs:(i + 1) * gs] for i in range(groups)])


@torch.no_grad()
def search_clip(w: torch.Tensor, gram: torch.Tensor, entry: LinearEntry, grid: int = 20, min_ratio: float = 0.5,
                max_ratio: float = 0.995) -> dict[str, torch.Tensor]:
    """LWC factors ``{"up", "low"}`` ``[out, groups]`` that start each (row, group) at the clipping ratio, on a
    grid of ``[min_ratio, 1]``, with the least output error ``d^T G_g d`` (``d``: the group's rounding error,
    ``G_g``: its block of the inputs' Gram matrix ``gram`` ``[in, in]``), as AWQ's auto-clip does with
    sampled activations. Ratios are capped at ``max_ratio`` so training can still move them (a sigmoid at
    1.0 has no gradient)."""
    out_f, in_f = w.shape
    if gram.shape != (in_f, in_f):
        raise ValueError(f"Gram matrix {tuple(gram.shape)} does not match in_features={in_f}")
    w, blocks = w.float(), group_blocks(gram.float(), entry.group_size)
    gs, groups = blocks.shape[-1], blocks.shape[0]
    pad = groups * gs - in_f
    best_err = torch.full((out_f, groups), float("inf"), device=w.device)
    best = torch.ones(out_f, groups, device=w.device)
    for ratio in torch.linspace(1.0, min_ratio, grid).tolist():
        factor = torch.full((out_f, groups), math.log(ratio / (1 - ratio)) if ratio < 1 else 30.0, device=w.device)
        d = w - lwc_fake_quantize(w, factor, factor, entry)
        d = (torch.nn.functional.pad(d, (0, pad)) if pad else d).reshape(out_f, groups, gs)
        err = torch.einsum("ogi,gij,ogj->og", d, blocks, d)
        better = err < best_err
        best_err, best = torch.where(better, err, best_err), torch.where(better, ratio, best)
    factor = torch.logit(best.clamp(max=max_ratio))
    return {"up": factor, "low": factor.clone()}
