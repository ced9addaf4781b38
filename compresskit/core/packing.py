"""Dense little-endian bit packing into int32 words, as GPTQ and compressed-tensors store it.

Value ``j`` of a run occupies bits ``[j*bits, (j+1)*bits)`` of the run's little-endian bit stream.
For 2/4/8 bits that is ``32/bits`` values per word, lowest bits first. For 3 bits it is GPTQ's
"10 | 1 | 10 | 1 | 10" pattern: 32 values in 3 words, values 10 and 21 straddling two words.
"""
from __future__ import annotations

import math

import torch

_MASK32 = 0xFFFFFFFF


def block_shape(bits: int) -> tuple[int, int]:
    """(values, words) of the smallest run that fills whole int32 words."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    values = 32 // math.gcd(32, bits)
    return values, values * bits // 32


def packed_len(n: int, bits: int) -> int:
    values, words = block_shape(bits)
    if n % values:
        raise ValueError(f"{n} values cannot be packed at {bits} bits: the count must be a multiple of {values}")
    return n // values * words


def pack_int(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned ints ``[..., n]`` (each in ``[0, 2^bits)``) along the last dim into int32."""
    n = q.shape[-1]
    values, words = block_shape(bits)
    packed_len(n, bits)
    v = q.to(torch.int64)
    if v.numel() and (int(v.min()) < 0 or int(v.max()) >= 2**bits):
        raise ValueError(f"values out of range for {bits}-bit packing: [{int(v.min())}, {int(v.max())}]")
    v = v.reshape(*q.shape[:-1], n // values, values)
    out = torch.zeros(*v.shape[:-1], words, dtype=torch.int64, device=q.device)
    for j in range(values):
        word, bit = divmod(j * bits, 32)
        out[..., word] |= (v[..., j] << bit) & _MASK32
        if bit + bits > 32:  # straddles into the next word (3-bit only)
            out[..., word + 1] |= v[..., j] >> (32 - bit)
    out = out.reshape(*q.shape[:-1], n // values * words)
    return torch.where(out >= 2**31, out - 2**32, out).to(torch.int32)


def unpack_int(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of `pack_int`: int32 ``[..., m]`` -> uint8 ``[..., n]``."""
    values, words = block_shape(bits)
    expected = packed_len(n, bits)
    if packed.shape[-1] != expected:
        raise ValueError(f"packed last dim is {packed.shape[-1]}, expected {expected} for {n} values at {bits} bits")
    if 32 % bits == 0:  # fast path: every value sits inside one word
        shifts = torch.arange(0, 32, bits, dtype=torch.int32, device=packed.device)
        out = (packed.to(torch.int32).unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
        return out.reshape(*packed.shape[:-1], n).to(torch.uint8)
    p = (packed.to(torch.int64) & _MASK32).reshape(*packed.shape[:-1], n // values, words)
    out = torch.empty(*p.shape[:-1], values, dtype=torch.int64, device=packed.device)
    mask = (1 << bits) - 1
    for j in range(values):
        word, bit = divmod(j * bits, 32)
        val = p[..., word] >> bit
        if bit + bits > 32:
            val = val | (p[..., word + 1] << (32 - bit))
        out[..., j] = val & mask
    return out.reshape(*packed.shape[:-1], n).to(torch.uint8)
