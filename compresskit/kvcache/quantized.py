"""A KIVI-style quantized KV cache (Liu et al. 2024): keys quantized per channel, values per token, in groups
of 32, the most recent tokens kept in full precision, codes really packed into uint8 (2, 4 or 8 bits).
Two refinements from KVQuant (Hooper et al. 2024) for keys: they are quantized BEFORE RoPE (``rope``: the
model's rotary frequencies; the layer un-rotates a group before packing it and rotates it back when reading,
so a channel's range no longer spins with the position), and each group keeps its ``outliers`` entries
farthest from their channel's median exactly (fp16 value, int16 index) so they do not stretch the range.
On SmolLM2-135M the two took 2-bit's continuation perplexity increase at 4K from +8.9% to +3.4%
(docs/kvcache.md).

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
from .presses import rotate_half

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


def rotate(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, sign: float = 1.0) -> torch.Tensor:
    """RoPE (``sign`` +1, transformers' rotate-half convention) or its inverse (-1) of ``x`` ``[b, h, t, d]`` at
    ``positions`` (``[t]`` or ``[b, h, t]``), ``inv_freq`` ``[d / 2]``. A pure rotation: any attention scaling a
    rope type multiplies in cancels between un-rotating and rotating back."""
    if inv_freq.numel() * 2 != x.shape[-1]:
        raise ValueError(f"{inv_freq.numel()} rotary frequencies do not rotate a head of {x.shape[-1]}")
    angles = positions.to(device=x.device, dtype=torch.float32).unsqueeze(-1) * inv_freq.to(x.device).float()
    angles = torch.cat([angles, angles], dim=-1)
    return (x.float() * angles.cos() + sign * rotate_half(x.float()) * angles.sin()).to(x.dtype)


def split_outliers(k: torch.Tensor, group: int, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """In each group of ``group`` tokens of ``k`` ``[b, h, t, d]``, the ``count`` entries farthest from their
    channel's median: ``(k with them set to that median, index [b, h, t / group, count] into the group's
    group * d entries (token-major), their values in fp16)``."""
    b, h, t, d = k.shape
    if t % group or not 0 < count <= group * d:
        raise ValueError(f"{t} tokens in groups of {group} with {count} outliers each")
    x = k.reshape(b, h, t // group, group, d)
    median = x.median(dim=3, keepdim=True).values.expand_as(x).reshape(b, h, t // group, group * d)
    flat = x.reshape(b, h, t // group, group * d)
    index = (flat - median).abs().topk(count, dim=-1).indices
    inliers = flat.scatter(-1, index, median.gather(-1, index))
    small = torch.int16 if group * d <= torch.iinfo(torch.int16).max else torch.int32
    return inliers.reshape(b, h, t, d), index.to(small), flat.gather(-1, index).half()


def restore_outliers(k: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``k`` ``[b, h, t, d]`` with the entries `split_outliers` took out put back."""
    b, h, t, d = k.shape
    n = index.shape[2]
    flat = k.reshape(b, h, n, t // n * d).scatter(-1, index.long(), values.to(k.dtype))
    return flat.reshape(b, h, t, d)


class QuantizedLayer(EvictingLayer):
    """A cache layer whose tokens older than the ``residual`` most recent are stored at ``bits`` bits
    (keys per channel, values per token, groups of ``group``; scales and minima in fp16), keys before RoPE when
    given the model's ``rope`` frequencies and with ``outliers`` exact entries per key group; see the module
    docstring."""

    shared = ("rope",)  # the model's tensors: `cache_bytes` does not count them

    def __init__(self, bits: int = 4, group: int = 32, residual: int = 128, sink: int = 0, outliers: int = 0,
                 rope: torch.Tensor | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_bits(bits)
        if group < 1 or residual < 0 or sink < 0 or outliers < 0:
            raise ConfigError(f"KV-cache group={group} must be >= 1, residual={residual}, sink={sink} and "
                              f"outliers={outliers} >= 0")
        self.bits, self.group, self.residual, self.sink, self.outliers = bits, group, residual, sink, outliers
        self.rope = rope  # the model's rotary frequencies [head_dim / 2]
        self.qk = self.ks = self.kz = self.qv = self.vs = self.vz = None
        self.ko_index = self.ko_values = None  # the key outliers of each packed group, exact
        self.sink_keys = self.sink_values = None  # the first `sink` tokens, kept in full precision
        # positions of the tokens (for un-rotating keys): None while they are contiguous; after eviction, the
        # full-precision buffer's [b, h, t] (int64) and the packed store's (int32, counted as cache memory)
        self.positions = self.store_positions = None

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
            if self.positions is not None:
                self.positions = self.positions[..., s:]
        n -= n % self.group
        if n <= 0:
            return
        k, v = self.keys[..., :n, :].float(), self.values[..., :n, :].float()
        if self.rope is not None:
            k = rotate(k, self._buffer_positions(n), self.rope, -1.0)
        if self.outliers:
            k, index, exact = split_outliers(k, self.group, min(self.outliers, self.group * k.shape[-1]))
        value_group = min(self.group, v.shape[-1])  # a head narrower than a group is one group
        parts = quantize_keys(k, self.bits, self.group) + quantize_values(v, self.bits, value_group)
        new = {name: p if p.dtype == torch.uint8 else p.half()  # fp16 scales and minima
               for name, p in zip(("qk", "ks", "kz", "qv", "vs", "vz"), parts)}
        if self.outliers:
            new |= {"ko_index": index, "ko_values": exact}
        if self.positions is not None:
            new["store_positions"] = self.positions[..., :n].to(torch.int32)
            self.positions = self.positions[..., n:]
        for name, part in new.items():  # appended to the store along the token (or group) dimension
            old = getattr(self, name)
            setattr(self, name, part if old is None else torch.cat([old, part], dim=2))
        self.keys, self.values = self.keys[..., n:, :].contiguous(), self.values[..., n:, :].contiguous()

    def _buffer_positions(self, n: int) -> torch.Tensor:
        """Positions of the first ``n`` full-precision tokens: ``[b, h, n]`` after eviction, else ``[n]``."""
        if self.positions is not None:
            return self.positions[..., :n]
        start = self.seen - super().held()
        return torch.arange(start, start + n, device=self.keys.device)

    def _stored_keys(self, dtype: torch.dtype) -> torch.Tensor:
        keys = dequantize_keys(self.qk, self.ks, self.kz, self.bits, torch.float32)
        if self.ko_index is not None:
            keys = restore_outliers(keys, self.ko_index, self.ko_values)
        if self.rope is not None:
            if self.store_positions is not None:
                positions = self.store_positions
            else:  # contiguous: the store follows the sink tokens
                start = 0 if self.sink_keys is None else self.sink_keys.shape[-2]
                positions = torch.arange(start, start + keys.shape[-2], device=keys.device)
            keys = rotate(keys, positions, self.rope, 1.0)
        return keys.to(dtype)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        if self.is_initialized:
            self._flush()
        if self.positions is not None:  # after eviction: the new tokens' positions follow what was seen
            b, h, t = key_states.shape[0], key_states.shape[1], key_states.shape[-2]
            new = torch.arange(self.seen, self.seen + t, device=self.positions.device).expand(b, h, t)
            self.positions = torch.cat([self.positions, new], dim=-1)
        keys, values = super().update(key_states, value_states, *args, **kwargs)
        ks, vs = [keys], [values]
        if self.qk is not None:
            ks.insert(0, self._stored_keys(keys.dtype))
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
        if self.rope is not None:  # nothing was evicted before: the kept indices are the positions
            self.positions = indices.to(self.keys.device, torch.int64)

    def reset(self) -> None:
        super().reset()
        self.qk = self.ks = self.kz = self.qv = self.vs = self.vz = None
        self.ko_index = self.ko_values = None
        self.sink_keys = self.sink_values = None
        self.positions = self.store_positions = None
