"""Learnable weight clipping (LWC): per (row, group) clipping factors through a sigmoid.

``xmax = sigmoid(up) * max(W_g)``, ``xmin = sigmoid(low) * min(W_g)`` (asymmetric), or
``xmax = sigmoid(up) * absmax(W_g)`` (symmetric); factors start at 4.0 (sigmoid = 0.982).
"""
from __future__ import annotations

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
