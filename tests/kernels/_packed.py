"""Random packed layers for the kernel tests."""
from __future__ import annotations

import torch

from compresskit.core.formats import GPTQPacked
from compresskit.core.quant_math import compute_qparams, quantize


def random_packed(out_f: int, in_f: int, bits: int, group_size: int, seed: int = 0) -> GPTQPacked:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g) * 0.05
    scale, zero = compute_qparams(w, bits, group_size, sym=False)
    return GPTQPacked.pack(quantize(w, scale, zero, bits, group_size), scale, zero, bits, group_size)


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref.double()).norm() / ref.double().norm())


# (bits, group_size, in_features, out_features): every width x every group size (32/64/128 and
# per-channel); the layer dims 576, 1536 and 4096 each paired with a small one so the Triton
# interpreter stays fast; 576 with 128 is a ragged last group. 3-bit needs multiples of 32.
CASES = []
_SHAPES = [(576, 64), (64, 576), (1536, 32), (32, 1536), (4096, 32), (128, 4096)]
for i, (bits, gs) in enumerate((b, g) for b in (2, 3, 4, 8) for g in (32, 64, 128, -1)):
    k, n = _SHAPES[i % len(_SHAPES)]
    if gs != -1 and gs > k:
        gs = 32
    CASES.append((bits, gs, k, n))
ROWS = (1, 3, 17, 64)
