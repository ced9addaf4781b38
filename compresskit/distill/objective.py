"""One batch's distillation loss: run teacher and student, take their final hidden states (and the
mapped layers' outputs) with forward hooks, and combine the losses of `losses` as the config says.

Both models are called through their own ``__call__`` (the student possibly wrapped by accelerate for
data parallelism), asking for the logits of the last position only; the full-sequence logits are
formed chunk by chunk from the captured final hidden states (`losses.head_losses`).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn as nn

from ..core.arch import ArchSpec, get_arch, get_module
from ..core.errors import InputError
from .config import DistillConfig
from .losses import head_losses, hidden_state_loss, layer_map, next_token_labels


def core_model(model: nn.Module) -> nn.Module:
    """The transformers model inside accelerate / DDP / peft wrappers (module paths follow its ArchSpec)."""
    while True:
        if hasattr(model, "get_base_model"):  # peft
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), nn.Module):  # DDP, accelerate
            model = model.module
        else:
            return model


@contextmanager
def capture(model: nn.Module, paths: dict[str, str]) -> Iterator[dict[str, torch.Tensor]]:
    """While open, ``out[key]`` holds the first output of module ``paths[key]`` in each forward. A
    gradient-checkpointed layer runs again in the backward pass; the first output is kept."""
    out: dict[str, torch.Tensor] = {}
    handles = []

    def hook(key: str):
        def fn(_module, _args, output):
            if key not in out:
                out[key] = output[0] if isinstance(output, (tuple, list)) else output
        return fn

    try:
        for key, path in paths.items():
            handles.append(get_module(model, path).register_forward_hook(hook(key)))
        yield out
    finally:
        for h in handles:
            h.remove()


@dataclass
class Objective:
    """The loss of `DistillConfig` between one student and one teacher (layer mapping fixed at start)."""

    config: DistillConfig
    spec: ArchSpec
    mapping: list[tuple[int, int]]

    @classmethod
    def build(cls, student: nn.Module, teacher: nn.Module, config: DistillConfig) -> "Objective":
        s, t = core_model(student), core_model(teacher)
        spec = get_arch(s)
        if get_arch(t).family != spec.family:
            raise InputError(f"student ({spec.family}) and teacher ({get_arch(t).family}) are different families")
        if s.config.vocab_size != t.config.vocab_size:
            raise InputError(f"student vocabulary ({s.config.vocab_size}) differs from the teacher's "
                             f"({t.config.vocab_size}): logit distillation needs the same tokenizer")
        mapping: list[tuple[int, int]] = []
        if config.hidden_weight:
            if s.config.hidden_size != t.config.hidden_size:
                raise InputError(f"hidden-state loss needs equal widths (student {s.config.hidden_size}, teacher "
                                 f"{t.config.hidden_size}); use hidden_weight=0")
            kept = (getattr(s.config, "compresskit_pruning", None) or {}).get("kept_layers")
            mapping = layer_map(len(spec.blocks_of(s)), len(spec.blocks_of(t)), kept, config.hidden_layers or None)
        return cls(config, spec, mapping)

    def _paths(self, side: int) -> dict[str, str]:
        paths = {"final": self.spec.final_norm}
        for pair in self.mapping:
            paths[f"layer{pair[side]}"] = f"{self.spec.blocks}.{pair[side]}"
        return paths

    def __call__(self, student: nn.Module, teacher: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """``(loss, parts)`` for token ids ``[batch, seq]``; parts are floats for logging."""
        cfg = self.config
        s_core, t_core = core_model(student), core_model(teacher)
        with torch.no_grad(), capture(t_core, self._paths(1)) as t_out:
            teacher(input_ids=ids, use_cache=False, logits_to_keep=1)
        with capture(s_core, self._paths(0)) as s_out:
            student(input_ids=ids, use_cache=False, logits_to_keep=1)
        labels = next_token_labels(ids) if cfg.ce_weight else None
        sums = head_losses(s_out["final"], t_out["final"], get_module(s_core, self.spec.lm_head),
                           get_module(t_core, self.spec.lm_head), temperature=cfg.temperature, labels=labels,
                           chunk=cfg.kl_chunk)
        kl, loss = sums.kl_mean(), 0.0
        parts: dict[str, Any] = {"kl": float(kl.detach())}
        if cfg.kl_weight:
            loss = loss + cfg.kl_weight * kl
        if cfg.ce_weight:
            ce = sums.ce_mean()
            loss = loss + cfg.ce_weight * ce
            parts["ce"] = float(ce.detach())
        if self.mapping:
            hidden = torch.stack([hidden_state_loss(s_out[f"layer{i}"], t_out[f"layer{j}"], cfg.hidden_loss)
                                  for i, j in self.mapping]).mean()
            loss = loss + cfg.hidden_weight * hidden
            parts["hidden"] = float(hidden.detach())
        parts["loss"] = float(loss.detach())
        return loss, parts
