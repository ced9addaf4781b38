"""Which float weights of a student a distillation run trains (``DistillConfig.train_parts``).

Parts are named by role, found through the model's `ArchSpec` (not by substrings of names):
``attention`` (q/k/v/o of every block), ``mlp`` (gate/up/down), ``norms`` (the blocks' two norms
and the final norm), ``embed`` and ``lm_head`` (one tensor when the two are tied).
"""
from __future__ import annotations

from typing import Sequence

import torch.nn as nn

from ..core.arch import get_arch, get_module
from ..core.errors import ConfigError


def _modules(model: nn.Module, part: str) -> list[nn.Module]:
    spec = get_arch(model)
    blocks = list(spec.blocks_of(model))
    rel = {"attention": (spec.q_proj, spec.k_proj, spec.v_proj, spec.o_proj),
           "mlp": (spec.gate_proj, spec.up_proj, spec.down_proj),
           "norms": (spec.input_norm, spec.post_attention_norm)}.get(part)
    if rel is not None:
        found = [get_module(b, r) for b in blocks for r in rel]
        return found + ([get_module(model, spec.final_norm)] if part == "norms" else [])
    if part == "embed":
        return [get_module(model, spec.embed)]
    if part == "lm_head":
        return [get_module(model, spec.lm_head)]
    raise ConfigError(f"unknown student part {part!r}")


def part_parameters(model: nn.Module, parts: Sequence[str]) -> list[nn.Parameter]:
    """The float parameters of ``parts`` (empty: every float parameter), each once, in model order."""
    if not parts:
        return [p for p in model.parameters() if p.is_floating_point()]
    wanted = {id(p) for part in parts for m in _modules(model, part) for p in m.parameters()}
    return [p for p in model.parameters() if id(p) in wanted and p.is_floating_point()]
