"""Structural surgery: slice linears to the kept channels and heads, drop layers, and update the config
so the model is an ordinary Llama/Qwen2/Mistral of the smaller shape (``head_dim`` written explicitly,
layers renumbered, per-layer config lists such as ``layer_types`` filtered).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..core.arch import ArchSpec, get_module, set_module

# config fields that hold one entry per decoder layer (filtered when layers are removed)
PER_LAYER_CONFIG_LISTS = ("layer_types",)


def slice_linear(linear: nn.Linear, *, out_idx: torch.Tensor | None = None,
                 in_idx: torch.Tensor | None = None) -> nn.Linear:
    """A new ``nn.Linear`` holding the selected output rows and/or input columns (bias follows rows)."""
    w = linear.weight.detach()
    if out_idx is not None:
        w = w.index_select(0, out_idx.to(w.device))
    if in_idx is not None:
        w = w.index_select(1, in_idx.to(w.device))
    new = nn.Linear(w.shape[1], w.shape[0], bias=linear.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if linear.bias is not None:
            b = linear.bias.detach()
            new.bias.copy_(b if out_idx is None else b.index_select(0, out_idx.to(b.device)))
    new.weight.requires_grad_(linear.weight.requires_grad)
    return new


def head_rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Row indices of a projection for the given heads."""
    return (heads[:, None] * head_dim + torch.arange(head_dim)[None, :]).flatten()


def prune_mlp(block: nn.Module, spec: ArchSpec, keep: torch.Tensor) -> None:
    """Keep intermediate channels ``keep`` of the block's gated MLP."""
    for rel in (spec.gate_proj, spec.up_proj):
        set_module(block, rel, slice_linear(get_module(block, rel), out_idx=keep))
    set_module(block, spec.down_proj, slice_linear(get_module(block, spec.down_proj), in_idx=keep))


def prune_attention(block: nn.Module, spec: ArchSpec, q_heads: torch.Tensor, kv_heads: torch.Tensor,
                    head_dim: int) -> None:
    """Keep query heads ``q_heads`` and KV heads ``kv_heads`` (each kept query head's KV head among them,
    the same number of query heads per KV head)."""
    q_rows, kv_rows = head_rows(q_heads, head_dim), head_rows(kv_heads, head_dim)
    set_module(block, spec.q_proj, slice_linear(get_module(block, spec.q_proj), out_idx=q_rows))
    for rel in (spec.k_proj, spec.v_proj):
        set_module(block, rel, slice_linear(get_module(block, rel), out_idx=kv_rows))
    set_module(block, spec.o_proj, slice_linear(get_module(block, spec.o_proj), in_idx=q_rows))
    attn = get_module(block, spec.attention)
    if hasattr(attn, "num_key_value_groups"):
        attn.num_key_value_groups = len(q_heads) // len(kv_heads)
    for name, value in (("num_heads", len(q_heads)), ("num_key_value_heads", len(kv_heads))):
        if hasattr(attn, name):  # older transformers kept the counts on the module
            setattr(attn, name, value)


def keep_layers(model: nn.Module, spec: ArchSpec, keep: torch.Tensor) -> list[str]:
    """Keep decoder layers ``keep`` (sorted), renumber their ``layer_idx`` (KV cache slots) and filter the
    per-layer config lists. Returns the names of the config lists it filtered."""
    blocks = spec.blocks_of(model)
    kept = [blocks[i] for i in keep.tolist()]
    for new_idx, block in enumerate(kept):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    set_module(model, spec.blocks, nn.ModuleList(kept))
    cfg = model.config
    n_old = len(blocks)
    filtered = []
    for name in PER_LAYER_CONFIG_LISTS:
        value = getattr(cfg, name, None)
        if isinstance(value, (list, tuple)) and len(value) == n_old:
            setattr(cfg, name, [value[i] for i in keep.tolist()])
            filtered.append(name)
    cfg.num_hidden_layers = len(kept)
    return filtered


def update_shape(config, *, n_heads: int, n_kv: int, head_dim: int, intermediate: int) -> None:
    """Write the pruned widths into a transformers config (head_dim explicitly: it no longer equals
    hidden_size / num_attention_heads)."""
    config.num_attention_heads = n_heads
    config.num_key_value_heads = n_kv
    config.head_dim = head_dim
    config.intermediate_size = intermediate


def count_parameters(model: nn.Module) -> int:
    """Parameters, counting a tied embedding / lm_head once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
