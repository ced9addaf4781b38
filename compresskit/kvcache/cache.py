"""A transformers cache whose layers can drop tokens and still decode at the original positions.

`EvictingLayer` is a `DynamicLayer` that counts the tokens it has seen apart from the ones it holds:
``get_seq_length()`` is the number seen (so the model places the next token at its ORIGINAL position,
RoPE stays right after eviction), while ``get_mask_sizes()`` uses the number held, offset by the number
evicted (so the causal mask matches the keys actually there, also for several tokens fed at once).

Two layouts, both freeing the memory of what is dropped (`cache_bytes` counts the tensors held):
- `keep(indices)`: one count for every KV head of the layer; keys and values stay one rectangular tensor.
- `keep_heads([idx_0, idx_1, ...])`: a count per KV head (AdaKV-style budgets, retrieval heads that keep
  everything). Each head's keys and values are stored apart, so a head that keeps 10% holds 10%. At each
  decoding step the layer hands attention the heads padded to the longest (a transient, one layer at a
  time) and masks the padding per head with an additive ``position_bias`` that transformers' sdpa
  attention adds to its logits. Batch size 1, one token per step, sdpa attention.
"""
from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

from ..core.errors import InputError


class EvictingLayer(DynamicLayer):
    """A dynamic cache layer that can keep a subset of its tokens per KV head (see the module docstring).
    ``groups`` is the number of query heads per KV head (needed to mask per-head padding)."""

    def __init__(self, groups: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.groups = groups
        self.seen = 0
        self.fresh = 0  # tokens added by the last update (a prefill to compress)
        self.since = 0  # tokens added since the last compression (decoding-time re-compression)
        self.compressed = False
        self.target = 0  # tokens per head held right after the prompt was compressed
        self.head_keys: list[torch.Tensor] | None = None  # per-head layout: [n_h, head_dim] each (batch 1)
        self.head_values: list[torch.Tensor] | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        self.seen += key_states.shape[-2]
        self.fresh = key_states.shape[-2]
        self.since += key_states.shape[-2]
        if self.head_keys is not None:
            return self._update_heads(key_states, value_states, kwargs.get("kwargs"))
        return super().update(key_states, value_states, *args, **kwargs)

    def held(self) -> int:
        """Tokens held now (per KV head; the longest head in the per-head layout)."""
        if self.head_keys is not None:
            return max(k.shape[0] for k in self.head_keys)
        if not self.is_initialized or self.keys is None or self.keys.numel() == 0:
            return 0
        return self.keys.shape[-2]

    def held_per_head(self) -> list[int]:
        if self.head_keys is not None:
            return [k.shape[0] for k in self.head_keys]
        return [self.held()] * (0 if self.keys is None else self.keys.shape[1])

    def get_seq_length(self) -> int:
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        # the held keys stand for the positions just before the query's (offset = tokens evicted), so text fed
        # after a compressed prompt is causal among its own tokens and sees everything held
        return self.held() + query_length, self.seen - self.held()

    def keep(self, indices: torch.Tensor) -> None:
        """Keep the tokens ``indices`` ``[batch, kv_heads, n]`` (per head, in order) and free the rest."""
        self._mark_compressed()
        if self.head_keys is not None:
            return self.keep_heads(list(indices[0]))
        idx = indices.unsqueeze(-1).expand(-1, -1, -1, self.keys.shape[-1])
        self.keys = self.keys.gather(2, idx).contiguous()
        self.values = self.values.gather(2, idx).contiguous()

    def keep_heads(self, indices: list[torch.Tensor]) -> None:
        """Keep, for KV head ``h``, the tokens ``indices[h]`` ``[n_h]`` (in order; counts may differ per head)
        and free the rest (batch size 1)."""
        self._mark_compressed()
        if self.head_keys is None:
            if self.keys.shape[0] != 1:
                raise InputError("per-head KV budgets work on one sequence at a time (batch size 1); generate "
                                 "one prompt at a time or use a uniform policy (snapkv:0.5)")
            keys, values = self.keys[0], self.values[0]
            self.keys = self.keys[..., :0, :]  # keeps dtype and device; the tokens live in head_keys
            self.values = self.values[..., :0, :]
        else:
            keys, values = self.head_keys, self.head_values
        self.head_keys = [keys[h].index_select(0, i.to(keys[h].device)).contiguous() for h, i in enumerate(indices)]
        self.head_values = [values[h].index_select(0, i.to(keys[h].device)).contiguous()
                            for h, i in enumerate(indices)]

    def _mark_compressed(self) -> None:
        self.compressed, self.fresh, self.since = True, 0, 0

    def _update_heads(self, key_states: torch.Tensor, value_states: torch.Tensor,
                      attn_kwargs: dict[str, Any] | None) -> tuple[torch.Tensor, torch.Tensor]:
        if key_states.shape[0] != 1 or key_states.shape[-2] != 1:
            raise InputError("a cache with per-head budgets takes one token per step after its prompt was "
                             "compressed (generate, or feed further text token by token)")
        if not isinstance(attn_kwargs, dict):
            raise InputError("per-head KV budgets need an attention module that passes its kwargs to the cache "
                             "(Llama / Qwen2 / Mistral in transformers 5.x)")
        self.head_keys = [torch.cat([k, key_states[0, h]]) for h, k in enumerate(self.head_keys)]
        self.head_values = [torch.cat([v, value_states[0, h]]) for h, v in enumerate(self.head_values)]
        n = self.held()
        d = key_states.shape[-1]
        keys = key_states.new_zeros(1, len(self.head_keys), n, d)
        values = value_states.new_zeros(1, len(self.head_keys), n, d)
        bias = key_states.new_zeros(1, len(self.head_keys), 1, n)
        for h, (k, v) in enumerate(zip(self.head_keys, self.head_values)):
            keys[0, h, n - k.shape[0]:] = k  # left padding: the newest token is last in every head
            values[0, h, n - k.shape[0]:] = v
            bias[0, h, 0, : n - k.shape[0]] = torch.finfo(bias.dtype).min
        attn_kwargs["position_bias"] = bias.repeat_interleave(self.groups, dim=1)  # per query head
        return keys, values

    def reset(self) -> None:
        super().reset()
        self.seen = self.fresh = self.since = 0
        self.compressed = False
        self.target = 0
        self.head_keys = self.head_values = None

    def crop(self, tokens_to_remove: int) -> None:
        raise InputError("a compressed KV cache cannot be cropped: assisted / speculative decoding does not combine "
                         "with KV-cache compression; generate without a KV policy")


def evicting_cache(num_layers: int, groups: int = 1) -> Cache:
    """A `Cache` of ``num_layers`` `EvictingLayer`s, for ``model.generate(..., past_key_values=cache)``
    (``groups``: query heads per KV head, needed only by per-head budgets)."""
    return Cache(layers=[EvictingLayer(groups=groups) for _ in range(num_layers)])


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):  # e.g. the scales and zeros other quantized caches keep beside their codes
        return [t for v in value.values() for t in _tensors(v)]
    return []


def cache_bytes(cache: Cache) -> int:
    """Bytes held by the cache's tensors now: keys, values and every other tensor a layer keeps, also inside
    lists, tuples and dicts (per-head stores, the packed codes, scales and minima of a quantized layer).
    Tensor subclasses (optimum-quanto's) count at their logical size, not their packed one. Attributes a layer
    names in ``shared`` hold the model's tensors (rotary frequencies), not the cache's, and are not counted."""
    return sum(t.numel() * t.element_size() for layer in cache.layers for k, v in vars(layer).items()
               if k not in getattr(layer, "shared", ()) for t in _tensors(v))
