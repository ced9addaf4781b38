"""Uniform affine quantization as pure functions of tensors.

Conventions (GPTQ's, so that checkpoints load in the engines that read GPTQ):
- a weight ``w`` is ``[out_features, in_features]`` (torch Linear layout);
- groups run along the input dimension: input channel ``i`` belongs to group ``i // group_size``;
  ``group_size == -1`` means one group per output row (per channel). A last group smaller than
  ``group_size`` ("ragged") is expressed naturally by that index;
- ``w_hat = scale[g] * (q - zero[g])`` with ``q`` in ``[0, 2^bits - 1]`` and an integer ``zero``;
- scales are rounded to fp16 (the storage type) before ``q`` and ``zero`` are computed, so the
  stored triple dequantizes exactly to what was evaluated;
- symmetric quantization fixes ``zero = 2^(bits-1)`` and ``scale = 2 * absmax / (2^bits - 1)``.
"""
from __future__ import annotations

import math

import torch

SCALE_MIN = 1e-5  # as OmniQuant: avoids division by ~0 on constant groups


def num_groups(in_features: int, group_size: int) -> int:
    return 1 if group_size == -1 else math.ceil(in_features / group_size)


def group_index(in_features: int, group_size: int, device=None) -> torch.Tensor:
    """``g_idx``: the group of every input channel, shape ``[in_features]``, int32."""
    idx = torch.arange(in_features, device=device, dtype=torch.int32)
    return torch.zeros_like(idx) if group_size == -1 else idx // group_size


def _group_reduce(w: torch.Tensor, group_size: int, op: str) -> torch.Tensor:
    """min or max over each group of a ``[out, in]`` tensor -> ``[out, groups]``."""
    out_f, in_f = w.shape
    if group_size == -1:
        return getattr(w, op)(dim=1, keepdim=True).values
    groups = num_groups(in_f, group_size)
    pad = groups * group_size - in_f
    if pad:  # ragged last group: pad with a value that cannot win the reduction
        fill = float("inf") if op == "min" else float("-inf")
        w = torch.cat([w, w.new_full((out_f, pad), fill)], dim=1)
    return getattr(w.reshape(out_f, groups, group_size), op)(dim=2).values


def compute_qparams(
    w: torch.Tensor, bits: int, group_size: int, sym: bool, fp16_scale: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Min/max (round-to-nearest) scale and zero point per (row, group).

    Returns ``scale`` (float32 holding fp16-representable values, the packed formats' scale dtype; plain
    float32 with ``fp16_scale=False``, as GPTQ's rounding loop uses them) and ``zero`` (int32), both
    ``[out_features, groups]``. The range always includes 0, as GPTQ's quantizer does.
    """
    if w.dim() != 2:
        raise ValueError(f"expected a 2-D weight [out, in], got shape {tuple(w.shape)}")
    maxq = 2**bits - 1
    w = w.float()
    xmin = _group_reduce(w, group_size, "min").clamp(max=0)
    xmax = _group_reduce(w, group_size, "max").clamp(min=0)
    span = 2 * torch.maximum(-xmin, xmax) if sym else xmax - xmin
    scale = (span / maxq).clamp(min=SCALE_MIN)
    scale = scale.half().float() if fp16_scale else scale  # the zero point is computed from the stored scale
    if sym:
        zero = torch.full_like(scale, (maxq + 1) // 2, dtype=torch.int32)
    else:
        zero = torch.round(-xmin / scale).clamp(0, maxq).to(torch.int32)
    return scale, zero


def _expand(t: torch.Tensor, in_features: int, group_size: int) -> torch.Tensor:
    """``[out, groups]`` -> ``[out, in]`` following the group index."""
    return t[:, group_index(in_features, group_size, device=t.device).long()]


def quantize(
    w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, group_size: int
) -> torch.Tensor:
    """Integer codes ``q = clamp(round(w / scale) + zero, 0, 2^bits - 1)``, uint8 ``[out, in]``."""
    in_f = w.shape[1]
    if scale.shape != zero.shape or scale.shape != (w.shape[0], num_groups(in_f, group_size)):
        raise ValueError(
            f"scale {tuple(scale.shape)} / zero {tuple(zero.shape)} do not match weight "
            f"{tuple(w.shape)} with group_size {group_size}"
        )
    s = _expand(scale.float(), in_f, group_size)
    z = _expand(zero.float(), in_f, group_size)
    q = torch.round(w.float() / s) + z
    return q.clamp(0, 2**bits - 1).to(torch.uint8)


def dequantize(
    q: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    group_size: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``scale[g] * (q - zero[g])`` as ``[out, in]`` in ``dtype`` (computed in float32)."""
    in_f = q.shape[1]
    s = _expand(scale.float(), in_f, group_size)
    z = _expand(zero.float(), in_f, group_size)
    return (s * (q.float() - z)).to(dtype)


def fake_quantize(w: torch.Tensor, bits: int, group_size: int, sym: bool = False) -> torch.Tensor:
    """Quantize-dequantize in one go (round to nearest), same dtype as ``w``."""
    scale, zero = compute_qparams(w, bits, group_size, sym)
    return dequantize(quantize(w, scale, zero, bits, group_size), scale, zero, group_size, w.dtype)


def quantize_rows_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one fp16 scale per row (for embedding tables): ``(q int8, scale fp16)``."""
    if w.dim() != 2:
        raise ValueError(f"expected a 2-D table, got shape {tuple(w.shape)}")
    scale = (w.float().abs().amax(dim=1) / 127).clamp(min=SCALE_MIN).half()
    q = torch.round(w.float() / scale.float()[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB."""
    ref = reference.double()
    noise = (ref - approx.double()).pow(2).sum()
    return float(10 * torch.log10(ref.pow(2).sum() / noise.clamp(min=1e-30)))


# --- differentiable forms, for calibration (straight-through rounding) ---------------------------

def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity gradient in the backward pass."""
    return (x.round() - x).detach() + x


def group_minmax(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable per-(row, group) min and max of ``w`` [out, in] -> two ``[out, groups]``."""
    return _group_reduce(w, group_size, "min"), _group_reduce(w, group_size, "max")


def fake_quantize_ste(
    w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, group_size: int
) -> torch.Tensor:
    """``scale * (clamp(round(w / scale) + zero, 0, 2^b - 1) - zero)`` with straight-through rounding;
    gradients reach ``w`` and ``scale`` (``zero`` is treated as a constant). Groups are a reshape
    (``[out, groups, group_size]``), not a gather, so the backward pass stays cheap."""
    out_f, in_f = w.shape
    gs = in_f if group_size == -1 else group_size
    groups = num_groups(in_f, group_size)
    pad = groups * gs - in_f
    wg = torch.nn.functional.pad(w, (0, pad)) if pad else w
    wg = wg.reshape(out_f, groups, gs)
    s, z = scale.unsqueeze(-1), zero.detach().to(scale.dtype).unsqueeze(-1)
    q = torch.clamp(round_ste(wg / s) + z, 0, 2**bits - 1)
    out = ((q - z) * s).reshape(out_f, groups * gs)
    return out[:, :in_f] if pad else out


def quantize_activations(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Dynamic per-token asymmetric fake quantization of activations (last dim = channels).

    Straight-through rounding, so it can sit inside a calibration graph; identity for bits >= 16.
    """
    if bits >= 16:
        return x
    maxq = 2**bits - 1
    xf = x.float()
    xmin = xf.amin(dim=-1, keepdim=True).clamp(max=0)
    xmax = xf.amax(dim=-1, keepdim=True).clamp(min=0)
    scale = ((xmax - xmin) / maxq).clamp(min=SCALE_MIN)
    zero = torch.round(-xmin / scale).detach()
    q = torch.clamp(round_ste(xf / scale) + zero, 0, maxq)
    return ((q - zero) * scale).to(x.dtype)
