"""Bytes a policy's cache holds at a given context length, measured on the layout itself: each layer is
built, filled with a prompt of that many (zero) tokens, compressed by the policy's own budget rule (the
scores are random: what a head keeps does not change how many it keeps), given one generated token, and
its tensors counted with `cache_bytes`. One layer at a time, so 32K tokens cost one layer's prompt, not the
model's. No model runs: this is for model cards and sweeps over lengths; `bench/kvcache.py` also measures
caches after real prompts."""
from __future__ import annotations

import torch
from transformers.cache_utils import Cache

from .cache import cache_bytes
from .policy import KVPolicy, compress_layer


def layout_bytes(policy: KVPolicy | None, *, layers: int, kv_heads: int, head_dim: int, groups: int, tokens: int,
                 dtype: torch.dtype = torch.float32) -> int:
    """Bytes held after a ``tokens``-token prompt and one generated token by the cache ``policy`` builds
    (None: the full cache) for a model of ``layers`` x ``kv_heads`` x ``head_dim`` in ``dtype``."""
    policy = policy if policy is not None else KVPolicy(press="streaming", ratio=0.0)
    press = policy.build()
    g = torch.Generator().manual_seed(0)
    total = 0
    for i in range(layers):
        layer = policy.make_cache(1, groups, rope=torch.ones(head_dim // 2)).layers[0]  # rope: as a RoPE model
        prompt = torch.zeros(1, kv_heads, tokens, head_dim, dtype=dtype)
        layer.update(prompt, prompt)
        if press is not None and press.ratio > 0:
            compress_layer(layer, policy, press, torch.rand(1, kv_heads, tokens, generator=g), i, layers)
        one = torch.zeros(1, kv_heads, 1, head_dim, dtype=dtype)
        layer.update(one, one, kwargs={})
        total += cache_bytes(Cache(layers=[layer]))
    return total
