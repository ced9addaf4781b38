"""Block-by-block machinery shared by calibrated methods (OmniQuant, GPTQ).

Capture the hidden states entering the first decoder block for the calibration samples, then run
one block at a time over a whole activation stream kept on the CPU, micro-batch by micro-batch.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..core.arch import ArchSpec, get_arch
from ..core.manifest import LinearEntry
from .apply import LayerPlan


def block_entries(plans: list[LayerPlan], arch: ArchSpec, n_blocks: int) -> list[dict[str, LinearEntry]]:
    """Per block: block-relative linear name -> its entry, for the planned linears."""
    depth = len(arch.blocks.split(".")) + 1
    return [{p.name.split(".", depth)[-1]: p.entry for p in plans if p.name.startswith(f"{arch.blocks}.{i}.")}
            for i in range(n_blocks)]


class _Captured(Exception):
    pass


@torch.no_grad()
def capture_block_inputs(model: nn.Module, ids: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """Hidden states entering block 0 ``[N, L, H]`` (CPU, float32) and the block's other arguments."""
    arch = get_arch(model)
    block0 = arch.blocks_of(model)[0]
    device = next(model.parameters()).device
    inputs, kwargs = [], {}

    def grab(module, args, kw):
        inputs.append((args[0] if args else kw["hidden_states"]).detach().float().cpu())
        if not kwargs:
            kwargs.update({k: v for k, v in kw.items() if k not in ("hidden_states", "cache", "past_key_values")})
            kwargs["use_cache"] = False
        raise _Captured

    handle = block0.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for chunk in ids.split(batch_size):
            try:
                model(chunk.to(device), use_cache=False)
            except _Captured:
                pass
    finally:
        handle.remove()
    return torch.cat(inputs), kwargs


class _Enough(Exception):
    """Raised inside a block once every watched module has seen its input: the rest of the forward is not needed."""


@torch.no_grad()
def run_block(block: nn.Module, x: torch.Tensor, kwargs: dict[str, Any], batch_size: int,
              stats_of: dict[str, nn.Module] | None = None, grams_of: dict[str, nn.Module] | None = None,
              outputs: bool = True) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """The block over a whole stream, micro-batch by micro-batch; optionally the per-channel absmax of the
    inputs of ``stats_of`` modules (for LET's initialisation) and the Gram matrix ``X^T X / n`` of the inputs
    of ``grams_of`` modules (key ``gram.NAME``, on the inputs' device; GPTQ's Hessians, the clipping search).
    With ``outputs=False`` the block's output is not wanted (``None`` is returned for it): each micro-batch's
    forward stops as soon as every watched module has seen its input, so statistics of the attention
    projections cost a norm rather than a whole block."""
    device = next(block.parameters()).device
    stats: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    watched = {**(stats_of or {}), **{f"gram.{k}": m for k, m in (grams_of or {}).items()}}
    if not outputs and not watched:
        raise ValueError("run_block(outputs=False) without stats_of or grams_of computes nothing")
    seen: set[str] = set()

    def done(key: str) -> None:
        seen.add(key)
        if not outputs and len(seen) == len(watched):
            raise _Enough

    hooks = []
    for key, module in (stats_of or {}).items():
        def hook(m, args, key=key):
            a = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(dim=0).float().cpu()
            stats[key] = a if key not in stats else torch.maximum(stats[key], a)
            done(key)
        hooks.append(module.register_forward_pre_hook(hook))
    shared: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(input) -> (input, its Gram), one micro-batch
    for key, module in (grams_of or {}).items():
        def gram(m, args, key=f"gram.{key}"):
            x = args[0]
            if id(x) in shared and shared[id(x)][0] is x:  # q/k/v and gate/up read one tensor: one product
                g = shared[id(x)][1]
            else:
                a = x.detach().reshape(-1, x.shape[-1]).float()
                g = a.t() @ a
                shared[id(x)] = (x, g)  # holding x keeps its id from being reused within the micro-batch
            stats[key] = stats[key] + g if key in stats else g  # out of place: the shared g is never written
            counts[key] = counts.get(key, 0) + x.numel() // x.shape[-1]
            done(key)
        hooks.append(module.register_forward_pre_hook(gram))
    outs = []
    try:
        for xb in x.split(batch_size):
            seen.clear()
            shared.clear()
            try:
                out = block(xb.to(device), **kwargs)
            except _Enough:
                continue
            if not outputs:  # a watched module was not reached: a wrong name would give an empty statistic
                raise RuntimeError(f"run_block: the block's forward never reached {sorted(set(watched) - seen)}")
            outs.append((out[0] if isinstance(out, tuple) else out).float().cpu())
    finally:
        shared.clear()
        for h in hooks:
            h.remove()
    for key, n in counts.items():
        stats[key] = stats[key] / n
    return (torch.cat(outs) if outputs else None), stats
