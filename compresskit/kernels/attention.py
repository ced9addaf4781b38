"""Simulated activation quantization inside attention, for weight-activation recipes.

OmniQuant's W4A4 / W6A6 also quantize the queries and keys (after RoPE) and the values, per token;
softmax stays in floating point. compresskit registers an attention function with transformers that
fake-quantizes q, k, v and then calls transformers' own sdpa attention, and switches a model to it.
"""
from __future__ import annotations

import torch.nn as nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import AttentionInterface

from ..core.arch import ArchSpec, get_module
from ..core.quant_math import quantize_activations

ATTENTION_NAME = "compresskit_qkv"


def qkv_quantized_attention(module: nn.Module, query, key, value, attention_mask, **kwargs):
    bits = getattr(module, "compresskit_abits", 16)
    if bits < 16:
        query, key, value = (quantize_activations(t, bits) for t in (query, key, value))
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def register_attention() -> None:
    if ATTENTION_NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTENTION_NAME, qkv_quantized_attention)


def enable_qkv_quantization(model: nn.Module, arch: ArchSpec, bits: int) -> None:
    """Quantize q/k/v to ``bits`` per token in every block's attention (sdpa underneath)."""
    register_attention()
    for block in arch.blocks_of(model):
        get_module(block, arch.attention).compresskit_abits = bits
    model.config._attn_implementation = ATTENTION_NAME
