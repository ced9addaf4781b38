"""KV-cache compression for long-context inference (on core): eviction presses scored at prefill, a cache
that keeps the chosen tokens per KV head (one count per layer, or per-head budgets) and decodes at the
original positions, a KIVI-style quantized cache, and the policy that ties them to ``model.generate``
(``with compress_kv(model, "snapkv:0.5+kivi:4")``)."""
from .cache import EvictingLayer, cache_bytes, evicting_cache
from .memory import layout_bytes
from .policy import KVPolicy, attach_kv, attached_policy, cache_shape, check_model, compress_kv, rotary_frequencies
from .presses import (
    PRESSES, KnormPress, Press, RandomPress, RetrievalHeadsPress, SnapKVPress, StreamingLLMPress, TOVAPress,
    adaptive_keep, keep_indices, keep_top, window_attention,
)
from .quantized import (
    KV_BITS, QuantizedLayer, dequantize_keys, dequantize_values, quantize_keys, quantize_values, restore_outliers, rotate,
    split_outliers,
)

__all__ = ["KV_BITS", "PRESSES", "EvictingLayer", "KVPolicy", "KnormPress", "Press", "QuantizedLayer",
           "RandomPress", "RetrievalHeadsPress", "SnapKVPress", "StreamingLLMPress", "TOVAPress", "adaptive_keep",
           "attach_kv", "attached_policy", "cache_bytes", "cache_shape", "check_model", "compress_kv", "dequantize_keys",
           "dequantize_values", "evicting_cache", "keep_indices", "keep_top", "layout_bytes", "quantize_keys",
           "quantize_values", "restore_outliers", "rotary_frequencies", "rotate", "split_outliers", "window_attention"]
