"""KV-cache compression for long-context inference (on core): eviction presses scored at prefill, a cache
that keeps the chosen tokens per KV head and decodes at the original positions, a KIVI-style quantized cache,
and the policy that ties them to ``model.generate`` (``with compress_kv(model, "snapkv:0.5+kivi:4")``)."""
from .cache import EvictingLayer, cache_bytes, evicting_cache
from .memory import layout_bytes
from .policy import KVPolicy, attach_kv, attached_policy, check_model, compress_kv
from .quantized import KV_BITS, QuantizedLayer, dequantize_keys, dequantize_values, quantize_keys, quantize_values
from .presses import (
    PRESSES, KnormPress, Press, RandomPress, RetrievalHeadsPress, SnapKVPress, StreamingLLMPress, TOVAPress, adaptive_keep,
    keep_indices, keep_top, window_attention,
)

__all__ = ["KV_BITS", "PRESSES", "EvictingLayer", "QuantizedLayer", "dequantize_keys", "dequantize_values",
           "quantize_keys", "quantize_values", "KVPolicy", "KnormPress", "Press", "RandomPress", "RetrievalHeadsPress", "adaptive_keep", "keep_top", "SnapKVPress",
           "StreamingLLMPress", "TOVAPress", "attach_kv", "attached_policy", "cache_bytes", "layout_bytes", "check_model", "compress_kv", "evicting_cache",
           "keep_indices", "window_attention"]
