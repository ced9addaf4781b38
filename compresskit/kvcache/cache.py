"""A transformers cache whose layers can drop tokens and still decode at the original positions.

`EvictingLayer` is a `DynamicLayer` that counts the tokens it has seen apart from the ones it holds:
``get_seq_length()`` is the number seen (so the model places the next token at its ORIGINAL position,
RoPE stays right after eviction), while ``get_mask_sizes()`` uses the number held (so the causal mask
matches the keys actually there). `keep()` drops tokens per KV head with one shared count per layer, so
the keys stay one rectangular tensor and the memory is really freed (`cache_bytes` counts it).
"""
from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

from ..core.errors import InputError


class EvictingLayer(DynamicLayer):
    """A dynamic cache layer that can keep a subset of its tokens per KV head (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seen = 0
        self.fresh = 0  # tokens added by the last update (the prefill to compress)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        self.seen += key_states.shape[-2]
        self.fresh = key_states.shape[-2]
        return super().update(key_states, value_states, *args, **kwargs)

    def held(self) -> int:
        """Tokens held now (per KV head)."""
        if not self.is_initialized or self.keys is None or self.keys.numel() == 0:
            return 0
        return self.keys.shape[-2]

    def get_seq_length(self) -> int:
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.held() + query_length, 0

    def keep(self, indices: torch.Tensor) -> None:
        """Keep the tokens ``indices`` ``[batch, kv_heads, n]`` (per head, in order) and free the rest."""
        idx = indices.unsqueeze(-1).expand(-1, -1, -1, self.keys.shape[-1])
        self.keys = self.keys.gather(2, idx).contiguous()
        self.values = self.values.gather(2, idx).contiguous()

    def reset(self) -> None:
        super().reset()
        self.seen = self.fresh = 0

    def crop(self, tokens_to_remove: int) -> None:
        raise InputError("a compressed KV cache cannot be cropped: assisted / speculative decoding does not combine "
                         "with KV-cache compression; generate without a KV policy")


def evicting_cache(num_layers: int) -> Cache:
    """A `Cache` of ``num_layers`` `EvictingLayer`s, for ``model.generate(..., past_key_values=cache)``."""
    return Cache(layers=[EvictingLayer() for _ in range(num_layers)])


def cache_bytes(cache: Cache) -> int:
    """Bytes held by the cache's tensors now: keys, values and every other tensor a layer keeps (the packed
    codes, scales and minima of a quantized layer)."""
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in vars(layer).values()
               if isinstance(t, torch.Tensor))
