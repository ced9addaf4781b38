"""GPTQ (Frantar et al., 2023), written for compresskit: second-order error compensation.

Per linear, with ``H = 2/n * X^T X`` from its calibration inputs, columns are rounded left to right
and each rounding error is spread over the not-yet-rounded columns through the inverse Hessian's
Cholesky factor. Groups get their scale/zero from the current (already compensated) weights when
their first column is reached. No act-order: ``g_idx`` stays ``i // group_size``.
Within a block, linear groups run in execution order (q/k/v, o, gate/up, down), each on inputs
produced by the already-quantized earlier linears ("true sequential").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn

from ..core.arch import get_arch, get_module, set_module
from ..core.config import CalibratedConfig
from ..core.errors import ConfigError
from ..core.formats import GPTQPacked
from ..core.manifest import LinearEntry, QuantManifest
from ..core.quant_math import compute_qparams
from ..kernels.modules import QuantLinear
from .apply import build_manifest, enable_activation_quantization, plan_embeddings, plan_linears, quantize_embeddings
from .blockwise import block_entries, capture_block_inputs, run_block


@dataclass(frozen=True)
class GPTQConfig(CalibratedConfig):
    """GPTQ (Frantar et al., 2023): column-by-column rounding with second-order error compensation,
    one linear group at a time on the quantized stream. ``damp`` is the fraction of the mean Hessian
    diagonal added for stability; ``block_size`` columns are updated lazily together."""

    method: str = "gptq"
    damp: float = 0.01
    block_size: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.damp < 1:
            raise ConfigError(f"damp={self.damp} must lie in (0, 1)")
        if self.block_size < 1:
            raise ConfigError(f"block_size={self.block_size} must be positive")


def gptq_quantize(w: torch.Tensor, hessian: torch.Tensor, entry: LinearEntry, damp: float = 0.01,
                  block_size: int = 128) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(q [out, in] uint8, scale [out, groups], zero [out, groups])`` for ``w`` ``[out, in]``."""
    out_f, in_f = w.shape
    if hessian.shape != (in_f, in_f):
        raise ValueError(f"Hessian {tuple(hessian.shape)} does not match in_features={in_f}")
    maxq = 2**entry.bits - 1
    W = w.detach().float().clone()
    H = hessian.detach().float().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(in_f, device=H.device)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)

    gs = in_f if entry.group_size == -1 else entry.group_size
    groups = -(-in_f // gs)
    scale = torch.zeros(out_f, groups, device=W.device)
    zero = torch.zeros(out_f, groups, dtype=torch.int32, device=W.device)
    Q = torch.zeros(out_f, in_f, dtype=torch.uint8, device=W.device)
    for i1 in range(0, in_f, block_size):
        i2 = min(i1 + block_size, in_f)
        W1, Err1, Hinv1 = W[:, i1:i2].clone(), torch.zeros(out_f, i2 - i1, device=W.device), Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if col % gs == 0:  # a group starts: its parameters from the current, compensated weights
                g = col // gs
                current = torch.cat([W1[:, i:], W[:, i2:]], dim=1)[:, : min(gs, in_f - col)]
                s, z = compute_qparams(current, entry.bits, -1, entry.sym)
                scale[:, g], zero[:, g] = s[:, 0], z[:, 0]
            g = col // gs
            q = torch.clamp(torch.round(W1[:, i] / scale[:, g]) + zero[:, g], 0, maxq)
            Q[:, col] = q.to(torch.uint8)
            err = (W1[:, i] - scale[:, g] * (q - zero[:, g])) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return Q, scale, zero


@torch.no_grad()
def _hessians(block: nn.Module, names: list[str], stream: torch.Tensor, kwargs: dict[str, Any],
              batch_size: int) -> dict[str, torch.Tensor]:
    sums: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(names, 0)

    def hook(m, args, name):
        x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
        sums[name] = sums.get(name, 0) + 2 * x.t() @ x
        counts[name] += x.shape[0]

    hooks = [get_module(block, n).register_forward_pre_hook(lambda m, a, n=n: hook(m, a, n)) for n in names]
    try:
        run_block(block, stream, kwargs, batch_size)
    finally:
        for h in hooks:
            h.remove()
    return {n: sums[n] / counts[n] for n in names}


def quantize_gptq(model: nn.Module, cfg: GPTQConfig, calib_ids: torch.Tensor,
                  progress: Callable[..., None] | None = None) -> QuantManifest:
    """Quantize ``model`` in place with GPTQ on ``calib_ids`` ``[nsamples, seqlen]``."""
    plans, skipped = plan_linears(model, cfg)
    arch = get_arch(model)
    quantize_emb = plan_embeddings(model, cfg, arch)
    enable_activation_quantization(model, cfg)
    blocks = arch.blocks_of(model)
    entries = block_entries(plans, arch, len(blocks))
    stream, kwargs = capture_block_inputs(model, calib_ids, cfg.batch_size)
    for i, block in enumerate(blocks):
        for group in arch.groups:
            names = [n for n in group.linears if n in entries[i]]
            if not names:
                continue
            hessians = _hessians(block, names, stream, kwargs, cfg.batch_size)
            for name in names:
                dense, entry = get_module(block, name), entries[i][name]
                q, scale, zero = gptq_quantize(dense.weight, hessians[name], entry, cfg.damp, cfg.block_size)
                packed = GPTQPacked.pack(q.cpu(), scale.cpu(), zero.cpu(), entry.bits, entry.group_size)
                bias = None if dense.bias is None else dense.bias.detach()
                qlin = QuantLinear.from_packed(packed, bias, dense.weight.dtype, abits=entry.abits)
                set_module(block, name, qlin.to(dense.weight.device))
                if progress:
                    progress(1, f"block {i + 1}/{len(blocks)} {name}")
        stream, _ = run_block(block, stream, kwargs, cfg.batch_size)
    embeddings = quantize_embeddings(model, arch) if quantize_emb else None
    return build_manifest(model, cfg, plans, skipped, embeddings,
                          report={"method": "gptq", "calibration_tokens": int(calib_ids.numel())})
