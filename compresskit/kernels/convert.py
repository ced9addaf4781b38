"""Swap a model's dense modules for runtime quantized modules, from a manifest.

Used at load time (empty modules on the meta device, filled by the checkpoint loader) and after
quantization (modules built from freshly packed tensors).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..core.arch import get_module, set_module
from ..core.manifest import EmbeddingEntry, QuantManifest
from .modules import Int8Embedding, Int8Linear, QuantLinear


def install_empty_modules(model: nn.Module, manifest: QuantManifest, dtype: torch.dtype, device="meta") -> None:
    """Replace every module the manifest lists by an empty runtime module of the right shape."""
    for name, entry in manifest.linears.items():
        dense = get_module(model, name)
        qlin = QuantLinear(dense.in_features, dense.out_features, entry.bits, entry.group_size,
                           bias=entry.bias, dtype=dtype, device=device, abits=entry.abits)
        set_module(model, name, qlin)
    if manifest.embeddings is not None:
        install_int8_embeddings(model, manifest.embeddings, dtype, device)


def install_int8_embeddings(model: nn.Module, entry: EmbeddingEntry, dtype: torch.dtype, device="meta") -> None:
    emb = get_module(model, entry.embed)
    new_emb = Int8Embedding(emb.num_embeddings, emb.embedding_dim, emb.padding_idx, dtype=dtype, device=device)
    set_module(model, entry.embed, new_emb)
    if entry.lm_head is None:
        return
    head = get_module(model, entry.lm_head)
    set_module(model, entry.lm_head, Int8Linear(head.in_features, head.out_features, dtype=dtype, device=device))
    if entry.tied:
        tie_int8_head(model, entry)


def tie_int8_head(model: nn.Module, entry: EmbeddingEntry) -> None:
    """Make the lm_head share the embedding's int8 table and scales (the same Parameter objects)."""
    emb, head = get_module(model, entry.embed), get_module(model, entry.lm_head)
    head.weight = emb.weight
    head.weight_scale = emb.weight_scale
    tied = getattr(model, "all_tied_weights_keys", None)
    if isinstance(tied, dict):  # so transformers' own tie_weights() keeps both tied
        tied[f"{entry.lm_head}.weight"] = f"{entry.embed}.weight"
        tied[f"{entry.lm_head}.weight_scale"] = f"{entry.embed}.weight_scale"
