"""Packed weight formats: one concrete class per format, holding tensors and plain metadata only.

`GPTQPacked` is compresskit's native storage for quantized linears: the GPTQ layout with exact
zero points (GPTQModel's "gptq_v2" semantics), so that exporting to GPTQ is a renaming, not a
re-quantization. `Int8Rows` stores embedding tables (and the lm_head) as int8 with a scale per row.
"""
from __future__ import annotations

from dataclasses import dataclass

from collections.abc import Iterable

import torch

from .config import ConfigError, dividing_group_sizes
from .packing import block_shape, pack_int, packed_len, unpack_int
from .quant_math import dequantize, group_index, num_groups

# 2: a quantized linear's packed words are stored as ``NAME.weight`` (they are ``NAME.qweight`` in memory and
# in version 1). transformers without compresskit then refuses the checkpoint (the int32 words do not have
# the float weight's shape: "size mismatch") instead of building a model with random linears; compresskit's
# loader renames them back. Version 1 checkpoints still load.
FORMAT_VERSION = 2
STORED_WEIGHT = "weight"  # the stored name of a quantized linear's packed words (format 2)


def stored_packed_names(linears: "Iterable[str]") -> dict[str, str]:
    """In-memory name -> stored name of the packed words of each quantized linear (format 2)."""
    return {f"{n}.qweight": f"{n}.{STORED_WEIGHT}" for n in linears}


def check_layer_shape(
    name: str, in_features: int, out_features: int, bits: int, group_size: int, ragged_last_group: bool
) -> None:
    """Raise `ConfigError` when a linear of this shape cannot be stored at these settings."""
    values, _ = block_shape(bits)
    for what, n in (("in_features", in_features), ("out_features", out_features)):
        if n % values:
            raise ConfigError(
                f"{name}: {what}={n} is not a multiple of {values}, which {bits}-bit packing needs; "
                f"skip this module (skip=[{name.rsplit('.', 1)[-1]!r}]) or pick another bit width"
            )
    if group_size == -1 or in_features % group_size == 0 or ragged_last_group:
        return
    fits = dividing_group_sizes(in_features)
    raise ConfigError(
        f"{name}: group_size {group_size} does not divide in_features={in_features}. "
        f"Use a group size that divides it ({', '.join(map(str, fits)) or 'none'}), -1 for per-channel, "
        f"or allow a smaller last group with ragged_last_group=True (--ragged-last-group; "
        "most serving kernels need whole groups)"
    )


@dataclass
class GPTQPacked:
    """GPTQ tensors of one linear: ``w = scales[g_idx] * (q - qzeros[g_idx])`` (exact zeros)."""

    qweight: torch.Tensor  # int32 [in * bits / 32, out], packed along the input dim
    qzeros: torch.Tensor  # int32 [groups, out * bits / 32], packed along the output dim
    scales: torch.Tensor  # fp16 [groups, out]
    g_idx: torch.Tensor  # int32 [in]
    bits: int
    group_size: int
    in_features: int
    out_features: int

    TENSORS = ("qweight", "qzeros", "scales", "g_idx")

    @staticmethod
    def tensor_specs(in_features: int, out_features: int, bits: int, group_size: int) -> dict:
        """name -> (shape, dtype) of the stored tensors, for building empty modules before loading."""
        groups = num_groups(in_features, group_size)
        return {
            "qweight": ((packed_len(in_features, bits), out_features), torch.int32),
            "qzeros": ((groups, packed_len(out_features, bits)), torch.int32),
            "scales": ((groups, out_features), torch.float16),
            "g_idx": ((in_features,), torch.int32),
        }

    @classmethod
    def pack(
        cls, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, group_size: int
    ) -> "GPTQPacked":
        """From codes ``q`` [out, in], ``scale``/``zero`` [out, groups] (see `core.quant_math`)."""
        out_f, in_f = q.shape
        if scale.shape != (out_f, num_groups(in_f, group_size)) or zero.shape != scale.shape:
            raise ValueError(f"scale/zero shapes {tuple(scale.shape)}/{tuple(zero.shape)} do not fit q {tuple(q.shape)}")
        return cls(
            qweight=pack_int(q, bits).t().contiguous(),
            qzeros=pack_int(zero.t().contiguous(), bits),
            scales=scale.t().contiguous().half(),
            g_idx=group_index(in_f, group_size),
            bits=bits,
            group_size=group_size,
            in_features=in_f,
            out_features=out_f,
        )

    def codes(self) -> torch.Tensor:
        """The integer codes ``q``, uint8 ``[out, in]``."""
        return unpack_int(self.qweight.t(), self.bits, self.in_features)

    def zero_points(self) -> torch.Tensor:
        """The zero points as stored (groups first), uint8 ``[groups, out]``."""
        return unpack_int(self.qzeros, self.bits, self.out_features)

    def unpack(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(q [out, in] uint8, zero [out, groups] uint8, scale [out, groups] fp16)``."""
        return self.codes(), self.zero_points().t(), self.scales.t()

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        q, zero, scale = self.unpack()
        return dequantize(q, scale, zero, self.group_size, dtype)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {n: getattr(self, n) for n in self.TENSORS}

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())


@dataclass
class Int8Rows:
    """Symmetric int8 table with one fp16 scale per row: ``w[r] = weight[r] * weight_scale[r]``."""

    weight: torch.Tensor  # int8 [rows, cols]
    weight_scale: torch.Tensor  # fp16 [rows]

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.weight.float() * self.weight_scale.float()[:, None]).to(dtype)
