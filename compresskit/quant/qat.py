"""Quantization-aware distillation of a packed model without touching its integer codes.

`make_scales_trainable` swaps every `QuantLinear` for a `ScaleTrainableLinear`: the same weight
``scale[g] * (q - zero[g])`` computed densely from the frozen codes, with one learnable gain per
stored scale (``scale = scale0 * exp(log_gain)``, so a learning rate is a relative change and scales
stay positive). Optionally the RMSNorm weights train too (`train_norms`): the float side of OmniQuant's
LET fold; its weight side scales input channels, which per-group scales cannot store with the codes
frozen, and its output-row side is what the per-row scales already learn. `write_back_scales` rounds
the learned scales to fp16 (their storage type) into the original modules' ``scales`` buffers and
puts those modules back: ``qweight``, ``qzeros`` and ``g_idx`` are bit for bit what they were.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.arch import get_arch, get_module, set_module
from ..core.config import ConfigError
from ..core.quant_math import SCALE_MIN, group_index, quantize_activations
from ..kernels.modules import QuantLinear

FP16_MAX = 65504.0


class ScaleTrainableLinear(nn.Module):
    """A `QuantLinear` whose group scales learn while its codes stay frozen (the module is kept as
    ``source``, so the state dict still holds the packed buffers)."""

    def __init__(self, source: QuantLinear) -> None:
        super().__init__()
        self.source = source
        q, zero, scale = source.packed().unpack()  # [out, in], [out, groups], [out, groups]
        # groups follow i // group_size, as everywhere in compresskit (no act-order; see quant/gptq.py)
        g_idx = group_index(source.in_features, source.group_size, device=q.device).long()
        self.out_features, self.in_features, self.abits = source.out_features, source.in_features, source.abits
        groups = scale.shape[1]
        gs = source.in_features if source.group_size == -1 else source.group_size
        self._reshape = groups * gs == source.in_features  # whole groups: a reshape, else (ragged) a gather
        self._group_width = gs
        codes = q.to(torch.int16) - zero.to(torch.int16)[:, g_idx]
        self.register_buffer("codes", codes.to(torch.int8) if source.bits <= 7 else codes, persistent=False)
        self.register_buffer("g_index", g_idx, persistent=False)
        self.register_buffer("base_scale", scale.float(), persistent=False)
        self.log_gain = nn.Parameter(torch.zeros_like(self.base_scale))

    def scale(self) -> torch.Tensor:
        """The current scales ``[out, groups]`` (float32, differentiable)."""
        return (self.base_scale * torch.exp(self.log_gain)).clamp(SCALE_MIN, FP16_MAX)

    def weight(self) -> torch.Tensor:
        s = self.scale()
        if self._reshape:
            w = self.codes.float().view(self.out_features, -1, self._group_width) * s.unsqueeze(-1)
            return w.view(self.out_features, self.in_features)
        return self.codes.float() * s[:, self.g_index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.abits < 16:
            x = quantize_activations(x, self.abits)
        return F.linear(x, self.weight().to(x.dtype), self.source.bias)

    @torch.no_grad()
    def finish(self) -> QuantLinear:
        """Write the learned scales (rounded to fp16) into ``source`` and return it."""
        src = self.source
        src.scales.copy_(self.scale().half().t().to(src.scales.dtype))
        src._kernel = None  # prepared kernel copies hold the old scales
        return src

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bits={self.source.bits}, trainable scales"


def _norms(model: nn.Module) -> list[nn.Module]:
    spec = get_arch(model)
    out = [get_module(model, spec.final_norm)]
    for block in spec.blocks_of(model):
        out += [get_module(block, spec.input_norm), get_module(block, spec.post_attention_norm)]
    return out


def make_scales_trainable(model: nn.Module, *, train_norms: bool = False) -> list[nn.Parameter]:
    """Swap every QuantLinear of ``model`` for a `ScaleTrainableLinear`, freeze everything else
    (and, with ``train_norms``, unfreeze the RMSNorm weights); returns the parameters to train."""
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, QuantLinear)]
    if not layers:
        raise ConfigError("the student has no quantized layer; --quant-params-only trains the scales of a "
                          "quantized student (quantize it first, or drop --quant-params-only)")
    for p in model.parameters():
        p.requires_grad_(False)
    params: list[nn.Parameter] = []
    for name, m in layers:
        wrapper = ScaleTrainableLinear(m)
        set_module(model, name, wrapper)
        params.append(wrapper.log_gain)
    if train_norms:
        for norm in _norms(model):
            norm.weight.requires_grad_(True)
            params.append(norm.weight)
    return params


def write_back_scales(model: nn.Module) -> dict[str, Any]:
    """Put the original QuantLinears back with the learned scales; returns a summary of the change."""
    gains = []
    wrappers = [(name, m) for name, m in model.named_modules() if isinstance(m, ScaleTrainableLinear)]
    for name, m in wrappers:
        gains.append(m.log_gain.detach().abs().flatten())
        set_module(model, name, m.finish())
    for p in model.parameters():
        p.requires_grad_(False)
    if not gains:
        return {"layers": 0}
    g = torch.cat(gains)
    return {"layers": len(wrappers), "mean_abs_log_scale_change": float(g.mean()),
            "max_abs_log_scale_change": float(g.max()), "scales_changed": int((g > 0).sum())}
