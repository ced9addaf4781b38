"""Train one decoder block's LWC/LET parameters, then fold and pack them into the block.

The block's own forward runs with substituted parameters (``torch.func.functional_call``), so
attention, RoPE and GQA are transformers' code, not a copy of it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.func import functional_call

from ...core.arch import ArchSpec, get_module, set_module
from .config import OmniQuantConfig
from ...core.manifest import LinearEntry
from ...core.quant_math import quantize_activations
from ...kernels.modules import QuantLinear
from .let import Geometry, apply_let, init_let
from .lwc import init_factors, lwc_fake_quantize, lwc_pack, search_clip

NO_CLIP = 20.0  # sigmoid(20) == 1.0 in float32: plain min/max (used when LWC is off, and for fallback)


@dataclass
class BlockState:
    """What is learned for one block: clipping factors per linear and LET log-scales."""

    lwc: dict[str, dict[str, torch.Tensor]]
    let: dict[str, torch.Tensor] | None

    def tensors(self) -> dict[str, torch.Tensor]:
        flat = {f"lwc.{n}.{k}": v for n, d in self.lwc.items() for k, v in d.items()}
        flat.update({f"let.{k}": v for k, v in (self.let or {}).items()})
        return flat

    @classmethod
    def from_tensors(cls, flat: dict[str, torch.Tensor]) -> "BlockState":
        lwc: dict[str, dict[str, torch.Tensor]] = {}
        let: dict[str, torch.Tensor] = {}
        for key, v in flat.items():
            kind, rest = key.split(".", 1)
            if kind == "let":
                let[rest] = v
            else:
                name, which = rest.rsplit(".", 1)
                lwc.setdefault(name, {})[which] = v
        return cls(lwc, let or None)

    def clone(self) -> "BlockState":
        return BlockState.from_tensors({k: v.detach().clone() for k, v in self.tensors().items()})


@dataclass
class BlockReport:
    first_loss: float = float("nan")
    last_loss: float = float("nan")
    epochs: int = 0
    stopped_early: bool = False
    retries: int = 0
    fallback: bool = False
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class BlockQuantizer:
    """OmniQuant for one block: ``init`` -> ``train`` -> ``install``."""

    def __init__(self, block: nn.Module, arch: ArchSpec, geo: Geometry, cfg: OmniQuantConfig,
                 entries: dict[str, LinearEntry]) -> None:
        self.block, self.arch, self.geo, self.cfg, self.entries = block, arch, geo, cfg, entries
        self.base = {k: v.detach().float().clone() for k, v in block.named_parameters()}
        self.device = next(block.parameters()).device

    @property
    def searched(self) -> list[str]:
        """The linears whose clipping ``clip_init="search"`` starts from the search (not ``clip_search_skip``)."""
        skip = {getattr(self.arch, role) for role in self.cfg.clip_search_skip}
        return [name for name in self.entries if name not in skip]

    # -- parameters -------------------------------------------------------------------------------
    def _clip_factors(self, value: float) -> dict[str, dict[str, torch.Tensor]]:
        out = {}
        for name, entry in self.entries.items():
            w = self.base[f"{name}.weight"]
            out[name] = {k: v.to(self.device) for k, v in init_factors(*w.shape, entry.group_size, value).items()}
        return out

    def init_state(self, stats: dict[str, torch.Tensor] | None) -> BlockState:
        """LWC factors (4.0, or searched where ``stats`` holds the linears' ``gram.NAME``) and LET scales."""
        lwc = self._clip_factors(4.0 if self.cfg.lwc else NO_CLIP)
        if self.cfg.lwc and stats and not self.cfg.let:
            for name, entry in self.entries.items():
                if f"gram.{name}" in stats and name in self.searched:
                    found = search_clip(self.base[f"{name}.weight"], stats[f"gram.{name}"].to(self.device), entry)
                    lwc[name] = {k: v.to(self.device) for k, v in found.items()}
        let = None
        if self.cfg.let and stats is not None:  # learned in log space: AdamW's steps become relative
            init = init_let(stats, self.base, self.arch, self.geo, self.cfg.alpha)
            let = {k: torch.log(v).to(self.device) for k, v in init.items()}
        return BlockState(lwc, let)

    def fallback_state(self) -> BlockState:
        """Round to nearest (min/max), no transformation."""
        return BlockState(self._clip_factors(NO_CLIP), None)

    def transformed(self, state: BlockState) -> dict[str, torch.Tensor]:
        if state.let is None:
            return dict(self.base)
        return apply_let(self.base, {k: torch.exp(v) for k, v in state.let.items()}, self.arch, self.geo)

    def fake_quant_params(self, state: BlockState) -> dict[str, torch.Tensor]:
        p = self.transformed(state)
        for name, entry in self.entries.items():
            f = state.lwc[name]
            p[f"{name}.weight"] = lwc_fake_quantize(p[f"{name}.weight"], f["up"], f["low"], entry)
        return p

    # -- forward -----------------------------------------------------------------------------------
    def _act_hooks(self) -> list[Any]:
        if self.cfg.abits >= 16:
            return []
        bits = self.cfg.abits
        return [get_module(self.block, n).register_forward_pre_hook(lambda m, a: (quantize_activations(a[0], bits),))
                for n in self.entries]

    def forward(self, params: dict[str, torch.Tensor], x: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        autocast = self.device.type == "cuda" and self.cfg.wbits < 8  # fp16/bf16 backward overflows at 8 bits
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
            out = functional_call(self.block, params, (x,), kwargs)
        out = out[0] if isinstance(out, tuple) else out
        return out.float()

    # -- training ----------------------------------------------------------------------------------
    def train(self, state: BlockState, q_inps: torch.Tensor, fp_outs: torch.Tensor, kwargs: dict[str, Any],
              log: Callable[[int, float], None] | None = None) -> tuple[BlockState, BlockReport]:
        """AdamW on the block-output MSE; on a NaN/inf loss, restore the last good epoch and retry with
        the learning rates / 10, up to ``max_retries`` times, then fall back to RTN."""
        report, t0 = BlockReport(), time.perf_counter()
        hooks = self._act_hooks()
        try:
            lr_scale, epoch, good = 1.0, 0, state.clone()
            best, best_loss, since_best = state.clone(), float("inf"), 0
            opt = self._optimizer(state, lr_scale)
            while epoch < self.cfg.epochs:
                loss = self._epoch(state, opt, q_inps, fp_outs, kwargs)
                if not math.isfinite(loss):
                    report.retries += 1
                    if report.retries > self.cfg.max_retries:
                        report.fallback = True
                        state = self.fallback_state()
                        break
                    state, lr_scale = good.clone(), lr_scale / 10
                    opt = self._optimizer(state, lr_scale)
                    continue
                good = state.clone()
                report.losses.append(loss)
                since_best = 0 if loss < best_loss * (1 - 1e-3) else since_best + 1
                if loss < best_loss:  # the epoch's mean loss was measured with the parameters it started
                    best_loss = loss  # from drifting to the end: keep the end state of the best epoch
                    best = state.clone()
                epoch += 1
                if log:
                    log(epoch, loss)
                if self.cfg.patience and since_best >= self.cfg.patience and epoch < self.cfg.epochs:
                    report.stopped_early = True
                    state = best
                    break
            else:
                state = best if report.losses else state
        finally:
            for h in hooks:
                h.remove()
        report.epochs = len(report.losses)
        if report.losses:
            report.first_loss, report.last_loss = report.losses[0], report.losses[-1]
        report.seconds = time.perf_counter() - t0
        return state, report

    def _epoch(self, state: BlockState, opt: torch.optim.Optimizer, q_inps, fp_outs, kwargs) -> float:
        total, n = 0.0, 0
        for xb, yb in zip(q_inps.split(self.cfg.batch_size), fp_outs.split(self.cfg.batch_size)):
            xb, yb = xb.to(self.device), yb.to(self.device)
            loss = torch.nn.functional.mse_loss(self.forward(self.fake_quant_params(state), xb, kwargs), yb.float())
            if not torch.isfinite(loss):
                return float("nan")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n = total + float(loss.detach()), n + 1
        return total / max(n, 1)

    def _optimizer(self, state: BlockState, lr_scale: float) -> torch.optim.Optimizer:
        groups = []
        if self.cfg.lwc:
            lwc = [t.requires_grad_(True) for d in state.lwc.values() for t in d.values()]
            groups.append({"params": lwc, "lr": self.cfg.lr_lwc * lr_scale})
        if state.let is not None:
            groups.append({"params": [t.requires_grad_(True) for t in state.let.values()],
                           "lr": self.cfg.lr_let * lr_scale})
        return torch.optim.AdamW(groups or [{"params": [torch.zeros(1, requires_grad=True)]}], weight_decay=0.0)

    # -- folding and packing -----------------------------------------------------------------------
    @torch.no_grad()
    def install(self, state: BlockState) -> None:
        """Fold LET into the block's weights and norms, and replace each planned linear by its packed form."""
        p = self.transformed(state)
        own = dict(self.block.named_parameters())
        for key, value in p.items():
            if key in own:
                own[key].data.copy_(value.to(own[key].dtype))
        for name, entry in self.entries.items():
            dense = get_module(self.block, name)
            f = state.lwc[name]
            packed = lwc_pack(p[f"{name}.weight"], f["up"], f["low"], entry)
            bias = p.get(f"{name}.bias")
            qlin = QuantLinear.from_packed(packed, bias, dtype=dense.weight.dtype, abits=entry.abits)
            set_module(self.block, name, qlin.to(self.device))
