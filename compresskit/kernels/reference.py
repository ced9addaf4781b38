"""The torch reference path: dequantize the packed weight, then a dense matmul.

Every faster kernel is checked against these functions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.formats import GPTQPacked


def gptq_linear(x: torch.Tensor, packed: GPTQPacked, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ dequant(W).T + bias`` in the dtype of ``x``."""
    if x.shape[-1] != packed.in_features:
        raise ValueError(f"input has {x.shape[-1]} features, the layer expects {packed.in_features}")
    w = packed.dequantize(x.dtype)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))


def int8_rows_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
    """``x @ (weight * scale[:, None]).T``: the row scale is applied to the output columns."""
    y = F.linear(x, weight.to(x.dtype))
    return y * weight_scale.to(x.dtype)


def int8_rows_embedding(ids: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, dtype) -> torch.Tensor:
    """Gather rows, then dequantize only those."""
    return weight[ids].to(dtype) * weight_scale[ids].to(dtype)[..., None]
