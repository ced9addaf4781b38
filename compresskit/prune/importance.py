"""Activation-based importance (Minitron, Muralidharan et al. 2024), collected by hooks on calibration data.

- MLP channel: mean |x| over the sequence at the down-projection input, then L2 over samples.
- Attention head: the L2 norm over head_dim of the head's output before o_proj, mean over the
  sequence, then L2 over samples.
- Layer: block influence (ShortGPT, Men et al. 2024): 1 - cos(block input, block output) per token,
  averaged over tokens and samples.

The per-sample scores are short pure functions; `collect_importance` only wires them to hooks.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..core.arch import ArchSpec, get_module


def channel_scores(x: torch.Tensor) -> torch.Tensor:
    """``[batch, seq, channels]`` down-proj input -> ``[batch, channels]``: mean |x| over the sequence."""
    return x.detach().float().abs().mean(dim=1)


def head_scores(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``[batch, seq, heads * head_dim]`` o_proj input -> ``[batch, heads]``: per-token L2 over head_dim,
    mean over the sequence."""
    b, t, width = x.shape
    return x.detach().float().view(b, t, n_heads, width // n_heads).norm(dim=-1).mean(dim=1)


def block_influence(x_in: torch.Tensor, x_out: torch.Tensor) -> torch.Tensor:
    """``[batch, seq, hidden]`` block input and output -> ``[batch]``: mean over tokens of 1 - cos."""
    cos = torch.nn.functional.cosine_similarity(x_in.detach().float(), x_out.detach().float(), dim=-1)
    return (1.0 - cos).mean(dim=1)


@dataclass
class Importance:
    """Scores of every unit, one row per layer (all float32, CPU)."""

    mlp: torch.Tensor      # [layers, intermediate]
    heads: torch.Tensor    # [layers, query heads]
    layers: torch.Tensor   # [layers]
    samples: int
    tokens: int

    def summary(self) -> dict:
        """Small JSON-able description (for the provenance record)."""
        return {
            "samples": self.samples, "tokens": self.tokens,
            "block_influence": [round(float(v), 5) for v in self.layers],
            "head_score_mean_per_layer": [round(float(v), 5) for v in self.heads.mean(dim=1)],
            "mlp_score_mean_per_layer": [round(float(v), 5) for v in self.mlp.mean(dim=1)],
        }


class _Accumulator:
    """Sums of squared per-sample scores (L2 over samples) and sums of block influence."""

    def __init__(self, n_layers: int, n_heads: int, intermediate: int):
        self.mlp_sq = torch.zeros(n_layers, intermediate)
        self.head_sq = torch.zeros(n_layers, n_heads)
        self.bi_sum = torch.zeros(n_layers)
        self.bi_count = torch.zeros(n_layers)
        self.n_heads = n_heads

    def mlp_hook(self, i: int) -> Callable:
        def hook(_module, args):
            self.mlp_sq[i] += channel_scores(args[0]).pow(2).sum(dim=0).cpu()
        return hook

    def head_hook(self, i: int) -> Callable:
        def hook(_module, args):
            self.head_sq[i] += head_scores(args[0], self.n_heads).pow(2).sum(dim=0).cpu()
        return hook

    def block_hook(self, i: int) -> Callable:
        def hook(_module, args, kwargs, output):
            x_in = args[0] if args else kwargs["hidden_states"]
            x_out = output[0] if isinstance(output, tuple) else output
            bi = block_influence(x_in, x_out)
            self.bi_sum[i] += bi.sum().cpu()
            self.bi_count[i] += bi.numel()
        return hook


def collect_importance(model: nn.Module, spec: ArchSpec, ids: torch.Tensor, *, batch_size: int = 1,
                       progress: Callable[..., None] | None = None) -> Importance:
    """Run ``ids`` (``[nsamples, seqlen]``) through ``model`` and score channels, heads and layers."""
    blocks = spec.blocks_of(model)
    cfg = model.config
    acc = _Accumulator(len(blocks), cfg.num_attention_heads, cfg.intermediate_size)
    handles = []
    try:
        for i, block in enumerate(blocks):
            handles.append(get_module(block, spec.down_proj).register_forward_pre_hook(acc.mlp_hook(i)))
            handles.append(get_module(block, spec.o_proj).register_forward_pre_hook(acc.head_hook(i)))
            handles.append(block.register_forward_hook(acc.block_hook(i), with_kwargs=True))
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        with torch.inference_mode():
            for start in range(0, ids.shape[0], batch_size):
                batch = ids[start:start + batch_size].to(device)
                model(input_ids=batch, use_cache=False)
                if progress is not None:
                    progress(batch.shape[0], f"calibration sample {start + batch.shape[0]}/{ids.shape[0]}")
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return Importance(mlp=acc.mlp_sq.sqrt(), heads=acc.head_sq.sqrt(), layers=acc.bi_sum / acc.bi_count.clamp(min=1),
                      samples=int(ids.shape[0]), tokens=int(ids.numel()))
