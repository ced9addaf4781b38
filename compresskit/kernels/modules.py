"""Runtime modules that hold packed weights and compute through a kernel backend.

Built empty (shapes only) before a checkpoint is loaded, or from packed tensors right after
quantization; they hold no quantization logic of their own.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn

from ..core.formats import GPTQPacked, Int8Rows
from ..core.quant_math import quantize_activations
from . import reference


class QuantLinear(nn.Module):
    """A linear layer stored in the GPTQ layout (exact zero points)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int,
        group_size: int,
        bias: bool = False,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        abits: int = 16,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size, self.abits = bits, group_size, abits
        self.backend = "torch"
        specs = GPTQPacked.tensor_specs(in_features, out_features, bits, group_size)
        for name, (shape, tdtype) in specs.items():
            # scales follow the model's float dtype (fp16-exact values); integer tensors stay int32
            tdtype = dtype if tdtype.is_floating_point else tdtype
            self.register_buffer(name, torch.zeros(shape, dtype=tdtype, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None)

    @classmethod
    def from_packed(cls, packed: GPTQPacked, bias: torch.Tensor | None, dtype: torch.dtype,
                    abits: int = 16) -> "QuantLinear":
        m = cls(packed.in_features, packed.out_features, packed.bits, packed.group_size, bias is not None, dtype,
                abits=abits)
        for name, t in packed.tensors().items():
            getattr(m, name).copy_(t)
        if bias is not None:
            m.bias.copy_(bias)
        return m

    def packed(self) -> GPTQPacked:
        return GPTQPacked(
            self.qweight, self.qzeros, self.scales, self.g_idx,
            self.bits, self.group_size, self.in_features, self.out_features,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.abits < 16:  # simulated weight-activation quantization: no integer kernel here
            x = quantize_activations(x, self.abits)
        cached = getattr(self, "_dense", None)
        if cached is not None and cached.dtype == x.dtype:
            return torch.nn.functional.linear(x, cached, None if self.bias is None else self.bias.to(x.dtype))
        return reference.gptq_linear(x, self.packed(), self.bias)

    def extra_repr(self) -> str:
        g = "per-channel" if self.group_size == -1 else f"group_size={self.group_size}"
        a = "" if self.abits >= 16 else f", abits={self.abits} (simulated)"
        return f"in={self.in_features}, out={self.out_features}, bits={self.bits}, {g}{a}, backend={self.backend}"


class _Int8Rows(nn.Module):
    """int8 table [rows, cols] with one scale per row; parameters so transformers can tie them."""

    def __init__(self, rows: int, cols: int, dtype: torch.dtype, device=None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(rows, cols, dtype=torch.int8, device=device), requires_grad=False)
        self.weight_scale = nn.Parameter(torch.zeros(rows, dtype=dtype, device=device), requires_grad=False)

    def load_rows(self, rows: Int8Rows) -> None:
        self.weight.data.copy_(rows.weight)
        self.weight_scale.data.copy_(rows.weight_scale)

    def rows(self) -> Int8Rows:
        return Int8Rows(self.weight.data, self.weight_scale.data)


class Int8Embedding(_Int8Rows):
    """Token embedding stored as int8 rows; only the looked-up rows are dequantized."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 dtype: torch.dtype = torch.float32, device=None) -> None:
        super().__init__(num_embeddings, embedding_dim, dtype, device)
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return reference.int8_rows_embedding(ids, self.weight, self.weight_scale, self.weight_scale.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 rows"


class Int8Linear(_Int8Rows):
    """Bias-free linear stored as int8 rows (the lm_head; tied to the embedding when the model ties)."""

    def __init__(self, in_features: int, out_features: int, dtype: torch.dtype = torch.float32, device=None) -> None:
        super().__init__(out_features, in_features, dtype, device)
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return reference.int8_rows_linear(x, self.weight, self.weight_scale)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int8 rows"


@contextmanager
def dequantized_cache(model: nn.Module, dtype: torch.dtype | None = None) -> Iterator[None]:
    """Within the block, every QuantLinear computes with a weight dequantized once (the same values
    the reference path computes on each call), which makes repeated forwards (decoding) fast at the
    memory cost of a dense model. The cache is dropped on exit."""
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    try:
        for m in layers:
            m._dense = m.packed().dequantize(dtype or m.scales.dtype)
        yield
    finally:
        for m in layers:
            m._dense = None
