"""Triton kernels that dequantize packed group-wise asymmetric weights inside the matmul.

Layout read (prepared once per layer by `prepare`): the GPTQ ``qweight`` words ``[K / (32 / bits), N]``
for 2, 4 and 8 bits; for 3 bits two bit planes (a 2-bit plane ``[K / 16, N]`` and a 1-bit plane
``[K / 32, N]``) so that no value straddles a word; zero points unpacked to uint8 ``[G, N]``; scales
``[G, N]`` in the activation dtype. Group of input channel k: ``k // group_size`` (per-channel:
``group_size = K``; a ragged last group needs nothing special).

Two kernels: a split-K GEMV for decode (1-8 rows) whose partial sums go to a ``[split, M, N]`` float32
workspace (summed by torch: deterministic, no atomics), and a tiled GEMM with ``tl.dot`` for prefill.
Both run natively on CUDA and, with ``TRITON_INTERPRET=1`` set before triton is imported, on the
CPU (fp16/fp32 only there: the interpreter's bf16 arithmetic is wrong).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..core.formats import GPTQPacked
from ..core.packing import pack_int

GEMV_MAX_ROWS = 8


@dataclass
class TritonWeights:
    qweight: torch.Tensor  # int32 [K / (32 / bits), N]; for 3 bits, the 2-bit plane [K / 16, N]
    qhigh: torch.Tensor  # int32 [K / 32, N]: the 1-bit plane for 3 bits; an empty placeholder otherwise
    scales: torch.Tensor  # [G, N], activation dtype
    zeros: torch.Tensor  # uint8 [G, N]
    bits: int
    group_size: int  # K for per-channel
    in_features: int
    out_features: int


def prepare(packed: GPTQPacked, device: torch.device, dtype: torch.dtype) -> TritonWeights:
    """One-time repack for the kernels (3-bit planes, unpacked zeros); everything else is the GPTQ layout."""
    qweight, qhigh = packed.qweight, packed.qweight.new_zeros(1)
    if packed.bits == 3:
        q = packed.codes()  # [N, K]
        qweight = pack_int(q & 3, 2).t().contiguous()
        qhigh = pack_int(q >> 2, 1).t().contiguous()
    zeros = packed.zero_points()
    gs = packed.in_features if packed.group_size == -1 else packed.group_size
    return TritonWeights(qweight.to(device).contiguous(), qhigh.to(device), packed.scales.to(device, dtype).contiguous(),
                         zeros.to(device).contiguous(), packed.bits, gs, packed.in_features, packed.out_features)


@triton.jit
def _dequant_tile(qw_ptr, qh_ptr, s_ptr, z_ptr, offs_k, offs_n, K, N, group_size, BITS: tl.constexpr):
    """Weights ``[BLOCK_K, BLOCK_N]`` in float32; zero outside ``K x N``."""
    mask = (offs_k[:, None] < K) & (offs_n[None, :] < N)
    if BITS == 3:
        lo = tl.load(qw_ptr + (offs_k[:, None] // 16) * N + offs_n[None, :], mask=mask, other=0)
        hi = tl.load(qh_ptr + (offs_k[:, None] // 32) * N + offs_n[None, :], mask=mask, other=0)
        q = ((lo >> ((offs_k[:, None] % 16) * 2)) & 3) | (((hi >> (offs_k[:, None] % 32)) & 1) << 2)
    else:
        VPW: tl.constexpr = 32 // BITS
        word = tl.load(qw_ptr + (offs_k[:, None] // VPW) * N + offs_n[None, :], mask=mask, other=0)
        q = (word >> ((offs_k[:, None] % VPW) * BITS)) & ((1 << BITS) - 1)
    g = offs_k // group_size
    s = tl.load(s_ptr + g[:, None] * N + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + g[:, None] * N + offs_n[None, :], mask=mask, other=0).to(tl.int32)
    return (q - z).to(tl.float32) * s


@triton.jit
def _load_rows(x_ptr, offs_m, offs_k, M, K, stride_xm):
    """Activations ``[BLOCK_M, BLOCK_K]``; zero outside ``M x K``."""
    return tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                   mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0)


@triton.jit
def _gemv_kernel(x_ptr, qw_ptr, qh_ptr, s_ptr, z_ptr, ws_ptr, M, N, K, stride_xm, group_size, k_per_split,
                 BITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_start = pid_k * k_per_split
    for k0 in range(k_start, k_start + k_per_split, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        w = _dequant_tile(qw_ptr, qh_ptr, s_ptr, z_ptr, offs_k, offs_n, K, N, group_size, BITS)
        x = _load_rows(x_ptr, offs_m, offs_k, M, K, stride_xm).to(tl.float32)
        acc += tl.sum(x[:, :, None] * w[None, :, :], axis=1)
    out = ws_ptr + pid_k * M * N + offs_m[:, None] * N + offs_n[None, :]
    tl.store(out, acc, mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit
def _gemm_kernel(x_ptr, qw_ptr, qh_ptr, s_ptr, z_ptr, y_ptr, M, N, K, stride_xm, stride_ym, group_size,
                 BITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = _load_rows(x_ptr, offs_m, offs_k, M, K, stride_xm)
        w = _dequant_tile(qw_ptr, qh_ptr, s_ptr, z_ptr, offs_k, offs_n, K, N, group_size, BITS)
        acc = tl.dot(x, w.to(x.dtype), acc)
    out = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def _split_k(n_blocks: int, k: int, block_k: int, target_programs: int = 128) -> int:
    """How many K slices so that the grid has enough programs, each slice a whole number of tiles."""
    k_tiles = triton.cdiv(k, block_k)
    return max(1, min(k_tiles, target_programs // max(n_blocks, 1)))


def gemv(x: torch.Tensor, w: TritonWeights, workspace: torch.Tensor | None = None,
         block_n: int = 64, block_k: int = 64) -> torch.Tensor:
    """``x [M <= 8, K] @ dequant(W).T`` -> ``[M, N]`` float32 (split-K partial sums in ``workspace``)."""
    m, k = x.shape
    if m > GEMV_MAX_ROWS or k != w.in_features:
        raise ValueError(f"gemv takes at most {GEMV_MAX_ROWS} rows of {w.in_features} features, got {tuple(x.shape)}")
    n_blocks = triton.cdiv(w.out_features, block_n)
    split = _split_k(n_blocks, k, block_k)
    k_per_split = triton.cdiv(triton.cdiv(k, block_k), split) * block_k
    split = triton.cdiv(k, k_per_split)
    if workspace is None:
        workspace = torch.empty(split, m, w.out_features, device=x.device, dtype=torch.float32)
    elif workspace.shape[0] < split or tuple(workspace.shape[1:]) != (m, w.out_features):
        raise ValueError(f"workspace must be [>= {split}, {m}, {w.out_features}]")
    block_m = max(1, triton.next_power_of_2(m))
    _gemv_kernel[(n_blocks, split)](x, w.qweight, w.qhigh, w.scales, w.zeros, workspace, m, w.out_features, k,
                                    x.stride(0), w.group_size, k_per_split, BITS=w.bits, BLOCK_M=block_m,
                                    BLOCK_N=block_n, BLOCK_K=block_k)
    return workspace[:split].sum(0)


def gemm(x: torch.Tensor, w: TritonWeights, out: torch.Tensor | None = None,
         block_m: int = 32, block_n: int = 64, block_k: int = 32) -> torch.Tensor:
    """``x [M, K] @ dequant(W).T`` -> ``[M, N]`` in ``x.dtype`` (float32 accumulation)."""
    m, k = x.shape
    if k != w.in_features:
        raise ValueError(f"input has {k} features, the layer expects {w.in_features}")
    y = torch.empty(m, w.out_features, device=x.device, dtype=x.dtype) if out is None else out
    grid = (triton.cdiv(m, block_m), triton.cdiv(w.out_features, block_n))
    _gemm_kernel[grid](x, w.qweight, w.qhigh, w.scales, w.zeros, y, m, w.out_features, k, x.stride(0), y.stride(0),
                       w.group_size, BITS=w.bits, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k)
    return y


def matmul(x: torch.Tensor, w: TritonWeights) -> torch.Tensor:
    """GEMV for decode-sized inputs, tiled GEMM otherwise; result in ``x.dtype``."""
    x = x.contiguous()
    if x.shape[0] <= GEMV_MAX_ROWS:
        return gemv(x, w).to(x.dtype)
    return gemm(x, w)
