"""A KIVI-style quantized KV cache (Liu et al. 2024): keys quantized per channel, values per token, in groups
of 32, the most recent tokens kept in full precision, codes really packed into uint8 (2, 4 or 8 bits).

`QuantizedLayer` is an `EvictingLayer`, so eviction and quantization compose: a prefill lands in the
full-precision residual (attention over the prompt is exact, a press may evict from it), and each later
update first moves the oldest whole groups beyond the residual into the packed store. Attention reads
the store dequantized plus the residual. The math is short pure functions with shape checks.
"""
from __future__ import annotations

from typing import Any

import torch

from ..core.errors import ConfigError, InputError
from .cache import EvictingLayer

KV_BITS = (2, 4, 8)


def check_bits(bits: int) -> None:
    if bits not in KV_BITS:
        raise ConfigError(f"KV-cache bits={bits!r} is not supported; use 2, 4 or 8 (e.g. kivi:4)")


def pack_uint8(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes ``q`` (uint8, each < 2**bits) packed along the last dimension, ``8 // bits`` per byte."""
    check_bits(bits)
    per = 8 // bits
    if q.shape[-1] % per:
        raise ValueError(f"last dimension {q.shape[-1]} is not a multiple of {per} ({bits}-bit codes per byte)")
    q = q.to(torch.uint8).view(*q.shape[:-1], q.shape[-1] // per, per)
    out = torch.zeros(q.shape[:-1], dtype=torch.uint8, device=q.device)
    for i in range(per):
        out |= q[..., i] << (bits * i)
    return out


def unpack_uint8(p: torch.Tensor, bits: int) -> torch.Tensor:
    """The codes `pack_uint8` packed (last dimension ``8 // bits`` times longer)."""
    per, mask = 8 // bits, (1 << bits) - 1
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=p.device)
    return ((p.unsqueeze(-1) >> shifts) & mask).reshape(*p.shape[:-1], p.shape[-1] * per)


def quantize_minmax(x: torch.Tensor, bits: int, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric min/max quantization of ``x`` with one (scale, min) per slice along ``dim``:
    ``(codes uint8, scale, minimum)``, ``x ~= codes * scale + minimum``."""
    lo, hi = x.amin(dim=dim, keepdim=True), x.amax(dim=dim, keepdim=True)
    scale = ((hi - lo) / ((1 << bits) - 1)).clamp_min(1e-8)
    codes = ((x - lo) / scale).round().clamp_(0, (1 << bits) - 1).to(torch.uint8)
    return codes, scale, lo


def quantize_keys(k: torch.Tensor, bits: int, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keys ``[b, h, t, d]`` (``t`` a multiple of ``group``), per channel: each channel's ``group``
    consecutive tokens share a scale. Returns packed codes ``[b, h, t, d * bits / 8]`` and scale / minimum
    ``[b, h, t / group, d]``."""
    b, h, t, d = k.shape
    if t % group:
        raise ValueError(f"{t} key tokens are not whole groups of {group}")
    codes, scale, lo = quantize_minmax(k.reshape(b, h, t // group, group, d), bits, dim=3)
    return pack_uint8(codes.reshape(b, h, t, d), bits), scale.squeeze(3), lo.squeeze(3)


def dequantize_keys(packed: torch.Tensor, scale: torch.Tensor, lo: torch.Tensor, bits: int,
                    dtype: torch.dtype) -> torch.Tensor:
    b, h, n, d = scale.shape
    codes = unpack_uint8(packed, bits).reshape(b, h, n, -1, d).float()
    return (codes * scale.float().unsqueeze(3) + lo.float().unsqueeze(3)).reshape(b, h, -1, d).to(dtype)


def quantize_values(v: torch.Tensor, bits: int, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Values ``[b, h, t, d]`` (``d`` a multiple of ``group``), per token: each token's ``group`` consecutive
    channels share a scale. Returns packed codes ``[b, h, t, d * bits / 8]`` and scale / minimum
    ``[b, h, t, d / group]``."""
    b, h, t, d = v.shape
    if d % group:
        raise ValueError(f"head_dim {d} is not whole groups of {group}")
    codes, scale, lo = quantize_minmax(v.reshape(b, h, t, d // group, group), bits, dim=4)
    return pack_uint8(codes.reshape(b, h, t, d), bits), scale.squeeze(4), lo.squeeze(4)


def dequantize_values(packed: torch.Tensor, scale: torch.Tensor, lo: torch.Tensor, bits: int,
                      dtype: torch.dtype) -> torch.Tensor:
    b, h, t, n = scale.shape
    codes = unpack_uint8(packed, bits).reshape(b, h, t, n, -1).float()
    return (codes * scale.float().unsqueeze(4) + lo.float().unsqueeze(4)).reshape(b, h, t, -1).to(dtype)


class QuantizedLayer(EvictingLayer):
    """A cache layer whose tokens older than the ``residual`` most recent are stored at ``bits`` bits
    (keys per channel, values per token, groups of ``group``; scales and minima in fp16); see the module
    docstring."""

    def __init__(self, bits: int = 4, group: int = 32, residual: int = 128, sink: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_bits(bits)
        if group < 1 or residual < 0 or sink < 0:
            raise ConfigError(f"KV-cache group={group} must be >= 1, residual={residual} and sink={sink} >= 0")
        self.bits, self.group, self.residual, self.sink = bits, group, residual, sink
        self.qk = self.ks = self.kz = self.qv = self.vs = self.vz = None
        self.sink_keys = self.sink_values = None  # the first `sink` tokens, kept in full precision

    def quantized_tokens(self) -> int:
        """Tokens outside the full-precision residual: the sink tokens and the packed store."""
        sink = 0 if self.sink_keys is None else self.sink_keys.shape[-2]
        return sink + (0 if self.qk is None else self.qk.shape[-2])

    def held(self) -> int:
        return self.quantized_tokens() + super().held()

    def _flush(self) -> None:
        """Move the oldest whole groups beyond the residual from the full-precision buffer to the store."""
        n = super().held() - self.residual
        if self.sink and self.sink_keys is None and n > 0:  # the first flush: the sink tokens stay as they are
            s = min(self.sink, n)
            self.sink_keys, self.sink_values = self.keys[..., :s, :].clone(), self.values[..., :s, :].clone()
            self.keys, self.values = self.keys[..., s:, :].contiguous(), self.values[..., s:, :].contiguous()
            n -= s
        n -= n % self.group
        if n <= 0:
            return
        k, v = self.keys[..., :n, :], self.values[..., :n, :]
        value_group = min(self.group, v.shape[-1])  # a head narrower than a group is one group
        parts = quantize_keys(k.float(), self.bits, self.group) + quantize_values(v.float(), self.bits, value_group)
        parts = tuple(p if p.dtype == torch.uint8 else p.half() for p in parts)  # fp16 scales and minima
        if self.qk is None:
            self.qk, self.ks, self.kz, self.qv, self.vs, self.vz = parts
        else:
            old = (self.qk, self.ks, self.kz, self.qv, self.vs, self.vz)
            self.qk, self.ks, self.kz, self.qv, self.vs, self.vz = (torch.cat([a, b], dim=2)
                                                                    for a, b in zip(old, parts))
        self.keys, self.values = self.keys[..., n:, :].contiguous(), self.values[..., n:, :].contiguous()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        if self.is_initialized:
            self._flush()
        keys, values = super().update(key_states, value_states, *args, **kwargs)
        ks, vs = [keys], [values]
        if self.qk is not None:
            ks.insert(0, dequantize_keys(self.qk, self.ks, self.kz, self.bits, keys.dtype))
            vs.insert(0, dequantize_values(self.qv, self.vs, self.vz, self.bits, values.dtype))
        if self.sink_keys is not None:
            ks.insert(0, self.sink_keys)
            vs.insert(0, self.sink_values)
        return (keys, values) if len(ks) == 1 else (torch.cat(ks, dim=-2), torch.cat(vs, dim=-2))

    def keep(self, indices: torch.Tensor) -> None:
        if self.quantized_tokens():
            raise InputError("this quantized KV cache already holds a compressed prompt: evicting from it again (a "
                             "second prompt on the same cache) is not supported; start a new cache per prompt")
        super().keep(indices)

    def reset(self) -> None:
        super().reset()
        self.qk = self.ks = self.kz = self.qv = self.vs = self.vz = None
        self.sink_keys = self.sink_values = None
