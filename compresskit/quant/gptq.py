"""GPTQ (Frantar et al., 2023), written for compresskit: second-order error compensation.

Per linear, with ``H = 2/n * X^T X`` from its calibration inputs, columns are rounded left to right
and each rounding error is spread over the not-yet-rounded columns through the inverse Hessian's
Cholesky factor. Groups get their scale/zero when their first column is reached, from the weights as
compensated by the earlier 128-column blocks (not yet by the current block's columns), in float32, as the
reference implementation and GPTQModel do: on the same Hessian the rounded weights are GPTQModel's
(tests/quant/test_gptq.py holds a column-by-column reference); the scales are stored as fp16. With ``act_order`` columns are rounded in order of decreasing Hessian
diagonal (the inputs with the most energy first) and groups take their parameters up front from the
original weights ("static groups", as GPTQModel's ``static_groups``), so ``g_idx`` stays ``i // group_size``
and every kernel and loader reads the result. With ``act_group_aware`` (the default here and in GPTQModel; Gafni et al.,
"Group Aware Reordering", CVPRW 2025) the groups stay the natural ones but are rounded in order of their
largest Hessian diagonal, each group's columns by decreasing diagonal, and each group takes its parameters
when it is reached: the ordering's gain without static groups. When the damped Hessian does not factor (dead or collinear
inputs from too few tokens), the damping grows tenfold until it does; the damping used is reported.
Within a block, linear groups run in execution order (q/k/v, o, gate/up, down), each on inputs
produced by the already-quantized earlier linears ("true sequential"). Until its block's output is taken, a
quantized linear runs with float32 scales, as in the reference code and GPTQModel, and is packed (fp16 scales)
after: on the same calibration windows this stream gives GPTQModel's model (W3 g64 at 32 x 2048 tokens: held-out
perplexity 70.22 for both), where running the packed fp16-scale linears instead drifted to 76.03.
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
from ..core.quant_math import compute_qparams, dequantize, quantize_activations
from ..kernels.modules import QuantLinear
from .apply import build_manifest, enable_activation_quantization, plan_embeddings, plan_linears, quantize_embeddings
from .blockwise import block_entries, capture_block_inputs, run_block


@dataclass(frozen=True)
class GPTQConfig(CalibratedConfig):
    """GPTQ (Frantar et al., 2023): column-by-column rounding with second-order error compensation,
    one linear group at a time on the quantized stream. ``damp`` is the fraction of the mean Hessian
    diagonal added for stability (raised tenfold, up to 1, while the Hessian does not factor);
    ``block_size`` columns are updated lazily together; ``act_order`` rounds columns by decreasing Hessian
    diagonal with static groups; ``act_group_aware`` orders whole groups (and the columns within each) by the
    Hessian diagonal and takes each group's parameters when it is reached. Left unset, ``act_group_aware`` is on
    unless ``act_order`` is, as in GPTQModel (on SmolLM2-135M, 16 x 512 tokens, W3 g64: held-out perplexity 55.56
    and passkey 100% against natural order's 71.43 and 0-10%; W4 g64: 35.04 against 39.07); ``act_group_aware=False``
    is the plain column order. The default calibration is 128 x 2048 tokens (at least 64K are advised: the down
    projection's Hessian is 1536-8192 wide)."""

    method: str = "gptq"
    damp: float = 0.01
    block_size: int = 128
    act_order: bool = False
    act_group_aware: bool | None = None  # None: on unless act_order

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.act_group_aware is None:
            object.__setattr__(self, "act_group_aware", not self.act_order)
        if self.act_order and self.act_group_aware:
            raise ConfigError("act_order and act_group_aware are two column orders: set one of them")
        if not 0 < self.damp < 1:
            raise ConfigError(f"damp={self.damp} must lie in (0, 1)")
        if self.block_size < 1:
            raise ConfigError(f"block_size={self.block_size} must be positive")


def inverse_factor(hessian: torch.Tensor, damp: float, limit: float = 1.0) -> tuple[torch.Tensor, float]:
    """``(U, damp used)``: the upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1``, with ``damp``
    raised tenfold (up to ``limit``) while the damped Hessian does not factor."""
    eye = torch.eye(hessian.shape[0], device=hessian.device)
    mean = torch.mean(torch.diag(hessian))
    while True:
        lower, info = torch.linalg.cholesky_ex(hessian + damp * mean * eye)
        if info == 0:
            upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
            if info == 0 and bool(torch.isfinite(upper).all()):
                return upper, damp
        if damp >= limit:
            raise ConfigError(f"GPTQ: the Hessian does not factor even with damp={damp:g}; its calibration inputs "
                              "are degenerate (non-finite or all-constant): calibrate on more, varied text")
        damp = min(damp * 10, limit)


def group_aware_order(diag: torch.Tensor, group_size: int) -> torch.Tensor:
    """The column order of group-aware reordering: whole groups by their largest ``diag`` value, descending,
    the columns of each by ``diag``, descending; a last, partial group keeps its place at the end."""
    n = diag.numel()
    whole = n // group_size * group_size
    per_group = diag[:whole].view(-1, group_size)
    local = torch.argsort(per_group, dim=1, descending=True, stable=True)
    groups = torch.argsort(per_group.max(dim=1).values, descending=True, stable=True)
    order = (local[groups] + groups[:, None] * group_size).reshape(-1)
    tail = torch.arange(whole, n, device=diag.device)
    return torch.cat([order, tail[torch.argsort(diag[whole:], descending=True)]])


def gptq_quantize(w: torch.Tensor, hessian: torch.Tensor, entry: LinearEntry, damp: float = 0.01,
                  block_size: int = 128, act_order: bool = False, act_group_aware: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """``(q [out, in] uint8, scale [out, groups] float32, zero [out, groups], damp used)`` for ``w`` ``[out, in]``
    (the packed format stores the scales as fp16)."""
    out_f, in_f = w.shape
    if hessian.shape != (in_f, in_f):
        raise ValueError(f"Hessian {tuple(hessian.shape)} does not match in_features={in_f}")
    maxq = 2**entry.bits - 1
    W = w.detach().float().clone()
    H = hessian.detach().float().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    gs = in_f if entry.group_size == -1 else entry.group_size
    groups = -(-in_f // gs)
    scale = torch.zeros(out_f, groups, device=W.device)
    zero = torch.zeros(out_f, groups, dtype=torch.int32, device=W.device)
    order = torch.arange(in_f, device=W.device)
    if act_order:  # static groups: every group's parameters from the original weights, before any update
        scale, zero = compute_qparams(W, entry.bits, entry.group_size, entry.sym, fp16_scale=False)
        order = torch.argsort(torch.diag(H), descending=True)
    elif act_group_aware:  # each group's columns stay together: its parameters are taken when it is reached
        order = group_aware_order(torch.diag(H), gs)
    if act_order or act_group_aware:
        W, H = W[:, order], H[order][:, order]
    Hinv, damp = inverse_factor(H, damp)
    columns = order.tolist()  # one host copy, not a device sync per column

    Q = torch.zeros(out_f, in_f, dtype=torch.uint8, device=W.device)
    for i1 in range(0, in_f, block_size):
        i2 = min(i1 + block_size, in_f)
        W1, Err1, Hinv1 = W[:, i1:i2].clone(), torch.zeros(out_f, i2 - i1, device=W.device), Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = columns[i1 + i]  # the column of the original weight
            g = col // gs
            if not act_order and (i1 + i) % gs == 0:  # a group starts: parameters from W as the block began
                current = W[:, i1 + i:i1 + i + min(gs, in_f - g * gs)]
                s, z = compute_qparams(current, entry.bits, -1, entry.sym, fp16_scale=False)
                scale[:, g], zero[:, g] = s[:, 0], z[:, 0]
            q = torch.clamp(torch.round(W1[:, i] / scale[:, g]) + zero[:, g], 0, maxq)
            Q[:, col] = q.to(torch.uint8)
            err = (W1[:, i] - scale[:, g] * (q - zero[:, g])) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return Q, scale, zero, damp


def _hessians(block: nn.Module, names: list[str], stream: torch.Tensor, kwargs: dict[str, Any],
              batch_size: int) -> dict[str, torch.Tensor]:
    """``H = 2/n * X^T X`` of each linear in ``names`` on the block's inputs ``stream``."""
    _, stats = run_block(block, stream, kwargs, batch_size, grams_of={n: get_module(block, n) for n in names},
                         outputs=False)
    return {n: 2 * stats[f"gram.{n}"] for n in names}


def _calibration_linear(dense: nn.Module, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                        entry: LinearEntry) -> torch.utils.hooks.RemovableHandle | None:
    """Make ``dense`` what the calibration stream runs until its block is done: its rounded weights with float32
    scales (the reference code's and GPTQModel's stream; the block is packed, with fp16 scales, after its output
    is taken) and, for W-A recipes, inputs fake-quantized per token as `QuantLinear` does. Returns the hook."""
    dense.weight.data = dequantize(q, scale, zero, entry.group_size).to(dense.weight.dtype)
    if entry.abits >= 16:
        return None
    return dense.register_forward_pre_hook(lambda m, args: (quantize_activations(args[0], entry.abits), *args[1:]))


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
    raised: dict[str, float] = {}  # linears whose Hessian needed more damping than cfg.damp
    for i, block in enumerate(blocks):
        done: dict[str, tuple[GPTQPacked, Any]] = {}  # name -> (packed weights, calibration hook)
        for group in arch.groups:
            names = [n for n in group.linears if n in entries[i]]
            if not names:
                continue
            hessians = _hessians(block, names, stream, kwargs, cfg.batch_size)
            for name in names:
                dense, entry = get_module(block, name), entries[i][name]
                q, scale, zero, damp = gptq_quantize(dense.weight, hessians[name], entry, cfg.damp, cfg.block_size,
                                                     cfg.act_order, cfg.act_group_aware)
                if damp != cfg.damp:
                    raised[f"{arch.blocks}.{i}.{name}"] = damp
                packed = GPTQPacked.pack(q.cpu(), scale.cpu(), zero.cpu(), entry.bits, entry.group_size)
                done[name] = packed, _calibration_linear(dense, q, scale, zero, entry)
                if progress:
                    progress(1, f"block {i + 1}/{len(blocks)} {name}")
        stream, _ = run_block(block, stream, kwargs, cfg.batch_size)
        for name, (packed, hook) in done.items():
            dense = get_module(block, name)
            if hook is not None:
                hook.remove()
            bias = None if dense.bias is None else dense.bias.detach()
            qlin = QuantLinear.from_packed(packed, bias, dense.weight.dtype, abits=entries[i][name].abits)
            set_module(block, name, qlin.to(dense.weight.device))
    embeddings = quantize_embeddings(model, arch) if quantize_emb else None
    return build_manifest(model, cfg, plans, skipped, embeddings,
                          report={"method": "gptq", "calibration_tokens": int(calib_ids.numel()),
                                  "act_order": cfg.act_order, "act_group_aware": cfg.act_group_aware,
                                  "damping_raised": raised})
