"""Round-to-nearest quantization: min/max scales per group, no calibration data."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..core.config import QuantConfig
from ..core.formats import GPTQPacked
from ..core.manifest import LinearEntry, QuantManifest
from ..core.quant_math import compute_qparams, quantize
from .apply import Progress, quantize_linears


def rtn_pack(weight: torch.Tensor, entry: LinearEntry) -> GPTQPacked:
    """Quantize one ``[out, in]`` weight to nearest and pack it."""
    scale, zero = compute_qparams(weight, entry.bits, entry.group_size, entry.sym)
    q = quantize(weight, scale, zero, entry.bits, entry.group_size)
    return GPTQPacked.pack(q, scale, zero, entry.bits, entry.group_size)


def quantize_rtn(model: nn.Module, cfg: QuantConfig, progress: Progress | None = None) -> QuantManifest:
    """Quantize ``model`` in place with RTN; returns the manifest describing what was done."""
    with torch.no_grad():
        return quantize_linears(model, cfg, rtn_pack, progress)
