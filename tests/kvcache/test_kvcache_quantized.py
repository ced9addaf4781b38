"""The KIVI-style quantized cache: packing round trips, error bounds against the float keys and values,
bytes equal to the tensors held, generation close to the full cache, and composition with eviction."""
from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model

from compresskit.core.errors import ConfigError, InputError
from compresskit.kvcache import (
    KVPolicy, QuantizedLayer, cache_bytes, compress_kv, dequantize_keys, dequantize_values, quantize_keys,
    quantize_values,
)
from compresskit.kvcache.quantized import pack_uint8, unpack_uint8
from transformers.cache_utils import Cache

IDS = torch.randint(0, 300, (1, 200), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_packing_round_trips_and_uses_bits_per_code(bits):
    q = torch.randint(0, 1 << bits, (3, 5, 64), generator=torch.Generator().manual_seed(bits)).to(torch.uint8)
    p = pack_uint8(q, bits)
    assert p.dtype == torch.uint8 and p.shape == (3, 5, 64 * bits // 8)
    assert torch.equal(unpack_uint8(p, bits), q)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_keys_per_channel_and_values_per_token_stay_within_half_a_step(bits):
    g = torch.Generator().manual_seed(0)
    offsets = torch.zeros(16)
    offsets[[3, 11]] = torch.tensor([15.0, -12.0])
    k = torch.randn(1, 2, 64, 16, generator=g) + offsets  # outlier channels with a steady offset, as real keys
    v = torch.randn(1, 2, 64, 64, generator=g)
    qk, ks, kz = quantize_keys(k, bits, 32)
    qv, vs, vz = quantize_values(v, bits, 32)
    assert ks.shape == (1, 2, 2, 16) and vs.shape == (1, 2, 64, 2)  # one scale per channel per 32 tokens; per token
    dk = dequantize_keys(qk, ks, kz, bits, torch.float32)
    dv = dequantize_values(qv, vs, vz, bits, torch.float32)
    step_k = ks.repeat_interleave(32, dim=2)  # [1, 2, 64, 16]
    step_v = vs.repeat_interleave(32, dim=3)  # [1, 2, 64, 64]
    assert bool(((dk - k).abs() <= step_k / 2 + 1e-5).all()) and bool(((dv - v).abs() <= step_v / 2 + 1e-5).all())
    # per-channel keys beat per-token keys on outlier channels (why KIVI quantizes keys that way)
    per_token = dequantize_values(*quantize_values(k, bits, 16), bits, torch.float32)
    assert (dk - k).pow(2).mean() < (per_token - k).pow(2).mean()


def test_the_layer_keeps_the_recent_tokens_exact_and_counts_its_bytes():
    layer = QuantizedLayer(bits=4, group=32, residual=64)
    g = torch.Generator().manual_seed(0)
    k, v = torch.randn(1, 2, 150, 64, generator=g), torch.randn(1, 2, 150, 64, generator=g)
    keys, values = layer.update(k, v)
    assert torch.equal(keys, k) and layer.quantized_tokens() == 0  # the prefill's own attention is exact
    step_k, step_v = torch.randn(1, 2, 1, 64, generator=g), torch.randn(1, 2, 1, 64, generator=g)
    keys, values = layer.update(step_k, step_v)
    assert layer.quantized_tokens() == 64 and layer.held() == 151 and layer.get_seq_length() == 151
    assert torch.equal(keys[..., 64:, :], torch.cat([k[..., 64:, :], step_k], dim=2))  # 86 full-precision tokens
    assert (keys[..., :64, :] - k[..., :64, :]).abs().max() < 0.5  # 4-bit codes
    held = sum(t.numel() * t.element_size() for t in vars(layer).values() if isinstance(t, torch.Tensor))
    expected = 87 * 2 * 64 * 2 * 4 + 2 * (64 * 2 * 64 // 2) + 2 * 2 * (2 * 2 * 64) + 2 * 2 * (64 * 2 * 2)
    # residual fp32 keys+values; packed keys+values; key scale+min [1,2,2,64] fp16; value scale+min [1,2,64,2] fp16
    assert held == expected


def test_the_sink_tokens_stay_exact_and_are_counted():
    layer = QuantizedLayer(bits=2, group=32, residual=64, sink=4)
    g = torch.Generator().manual_seed(0)
    k, v = torch.randn(1, 2, 150, 64, generator=g), torch.randn(1, 2, 150, 64, generator=g)
    layer.update(k, v)
    keys, values = layer.update(torch.zeros(1, 2, 1, 64), torch.zeros(1, 2, 1, 64))
    # 150 - 64 residual = 86 beyond it: 4 sink tokens kept exact, then 2 whole groups (64) packed, 18 left
    assert layer.quantized_tokens() == 4 + 64 and layer.held() == 151
    assert torch.equal(keys[..., :4, :], k[..., :4, :]) and torch.equal(values[..., :4, :], v[..., :4, :])
    assert torch.equal(keys[..., 68:150, :], k[..., 68:, :]) and not torch.equal(keys[..., 4:68, :], k[..., 4:68, :])
    held = cache_bytes(Cache(layers=[layer]))
    fp32 = (4 + 83) * 2 * 64 * 2 * 4  # sink + residual, keys and values
    packed = 2 * (64 * 2 * 64 // 4) + 2 * 2 * (2 * 2 * 64) + 2 * 2 * (64 * 2 * 2)  # codes, scales and minima
    assert held == fp32 + packed


def test_generation_with_kivi4_stays_close_and_kivi2_runs_smaller():
    model = make_tiny_model("llama", num_hidden_layers=2)
    with torch.no_grad():
        full = model(IDS).logits[:, -1]
    sizes = {}
    for spec in ("kivi:8,residual=32", "kivi:4,residual=32", "kivi:2,residual=32"):
        policy = KVPolicy.parse(spec)
        cache = policy.make_cache(2)
        with torch.no_grad(), compress_kv(model, policy):
            model(IDS[:, :-1], cache=cache, use_cache=True)
            last = model(IDS[:, -1:], cache=cache, use_cache=True).logits[:, -1]
        sizes[spec] = cache_bytes(cache)
        err = (last - full).abs().max().item()
        assert err < {"kivi:8,residual=32": 1e-2, "kivi:4,residual=32": 0.1, "kivi:2,residual=32": 1.0}[spec], (spec, err)
    assert sizes["kivi:2,residual=32"] < sizes["kivi:4,residual=32"] < sizes["kivi:8,residual=32"]


def test_eviction_and_quantization_compose():
    model = make_tiny_model("llama", num_hidden_layers=2)
    policy = KVPolicy.parse("snapkv:0.5,window=8+kivi:4,residual=32")
    assert policy.name == "snapkv:0.5,window=8+kivi:4,residual=32" and KVPolicy.from_json(policy.to_json()) == policy
    with compress_kv(model, policy):
        out = model.generate(IDS, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 204)
    cache = policy.make_cache(2)
    with torch.no_grad(), compress_kv(model, policy):
        model(IDS, cache=cache, use_cache=True)
        model(IDS[:, -1:], cache=cache, use_cache=True)
    layer = cache.layers[0]
    # 4 sink tokens and 2 groups beyond the residual
    assert layer.held() == 101 and layer.quantized_tokens() == 4 + 64 and layer.get_seq_length() == 201


def test_bad_quantized_cache_settings():
    with pytest.raises(ConfigError, match="use 2, 4 or 8"):
        QuantizedLayer(bits=3)
    with pytest.raises(ConfigError, match="needs a press"):
        KVPolicy(press=None)


def test_text_after_the_compressed_prompt_is_kept_whole_and_the_store_refuses_a_second_eviction():
    model = make_tiny_model("llama", num_hidden_layers=2)
    policy = KVPolicy.parse("snapkv:0.5+kivi:4,residual=32")
    cache = policy.make_cache(2)
    with torch.no_grad(), compress_kv(model, policy):
        model(IDS, cache=cache, use_cache=True)
        model(IDS[:, -1:], cache=cache, use_cache=True)  # quantizes the oldest groups
        held = cache.layers[0].held()
        model(IDS[:, :40], cache=cache, use_cache=True)  # more text: appended, not evicted again
    assert cache.layers[0].held() == held + 40 and cache.layers[0].get_seq_length() == 241
    with pytest.raises(InputError, match="second prompt on the same cache"):
        cache.layers[0].keep(torch.zeros(1, 2, 4, dtype=torch.long))
