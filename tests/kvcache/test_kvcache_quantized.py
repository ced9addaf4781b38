"""The KIVI-style quantized cache: packing round trips, error bounds against the float keys and values,
bytes equal to the tensors held, generation close to the full cache, and composition with eviction."""
from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model

from compresskit.core.errors import ConfigError, InputError
from compresskit.kvcache import (
    KVPolicy, QuantizedLayer, cache_bytes, compress_kv, dequantize_keys, dequantize_values, quantize_keys,
    quantize_values, restore_outliers, rotary_frequencies, rotate, split_outliers,
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


def _keys_with_offsets(t: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    offsets = torch.zeros(16)
    offsets[[1, 9]] = torch.tensor([6.0, -5.0])  # steady channel offsets, as real pre-RoPE keys have
    return torch.randn(1, 2, t, 16, generator=g) + offsets


def test_rotate_is_transformers_rope_and_its_inverse():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    model = make_tiny_model("llama", num_hidden_layers=1)
    inv_freq = rotary_frequencies(model)
    k = torch.randn(1, 2, 10, inv_freq.numel() * 2)
    positions = torch.arange(5, 15)
    cos, sin = model.model.rotary_emb(k, positions[None])
    _, reference = apply_rotary_pos_emb(k, k, cos, sin)
    assert torch.allclose(rotate(k, positions, inv_freq), reference, atol=1e-5)
    assert torch.allclose(rotate(rotate(k, positions, inv_freq), positions, inv_freq, -1.0), k, atol=1e-5)
    per_head = positions.expand(1, 2, 10)  # positions per (batch, head), as after eviction
    assert torch.allclose(rotate(k, per_head, inv_freq), reference, atol=1e-5)


def test_outliers_are_the_entries_farthest_from_their_channel_median_and_come_back_exact():
    k = _keys_with_offsets(64)
    k[0, 1, 40, 3] = 30.0  # a spike in the second group of head 1
    inliers, index, exact = split_outliers(k, 32, 4)
    assert index.shape == (1, 2, 2, 4) and index.dtype == torch.int16 and exact.dtype == torch.float16
    assert 8 * 16 + 3 in index[0, 1, 1].tolist()  # token 40 = 8th of its group, channel 3
    assert inliers[0, 1, 40, 3].abs() < 5 and torch.equal(restore_outliers(inliers, index, exact.float()),
                                                          k.half().float().where(inliers != k, k))
    # with the spike set aside, the group's 2-bit keys are closer than with it stretching channel 3's range
    plain = dequantize_keys(*quantize_keys(k, 2, 32), 2, torch.float32)
    split = restore_outliers(dequantize_keys(*quantize_keys(inliers, 2, 32), 2, torch.float32), index, exact)
    assert (split - k).pow(2).mean() < (plain - k).pow(2).mean()


@pytest.mark.parametrize("evict", [False, True])
def test_prerope_keys_come_back_at_their_own_positions(evict):
    """8-bit keys quantized before RoPE come back within a small error of the rotated keys; a position off by
    one (e.g. taken from the cache length after eviction) would rotate them far off."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, 16, 2).float() / 16))
    pre = _keys_with_offsets(150)
    post = rotate(pre, torch.arange(150), inv_freq)
    layer = QuantizedLayer(bits=8, group=32, residual=32, sink=4, outliers=2, rope=inv_freq)
    layer.update(post, post)
    expected = post
    if evict:
        kept = torch.stack([torch.arange(0, 150, 2), torch.arange(1, 150, 2)])[None]  # each head its own tokens
        layer.keep(kept)
        expected = post.gather(2, kept.unsqueeze(-1).expand(-1, -1, -1, 16))
    step = rotate(_keys_with_offsets(1, seed=1), torch.tensor([150]), inv_freq)
    keys, _ = layer.update(step, step)
    assert layer.quantized_tokens() > 32 and (layer.store_positions is not None) == evict
    assert (keys[..., :-1, :] - expected).abs().max() < 0.1 and torch.equal(keys[..., -1:, :], step)
    shifted = rotate(rotate(expected, torch.arange(1, 151)[: expected.shape[2]], inv_freq, -1.0),
                     torch.arange(expected.shape[2]), inv_freq)
    assert (shifted - expected).abs().max() > 1.0  # what a wrong position costs


def test_prerope_and_outliers_make_2bit_keys_closer():
    inv_freq = 1.0 / (10000 ** (torch.arange(0, 16, 2).float() / 16))
    post = rotate(_keys_with_offsets(256), torch.arange(256), inv_freq)
    errors = {}
    for name, rope, outliers in (("kivi", None, 0), ("prerope", inv_freq, 0), ("prerope+outliers", inv_freq, 16)):
        layer = QuantizedLayer(bits=2, group=32, residual=0, outliers=outliers, rope=rope)
        layer.update(post, post)
        keys, _ = layer.update(post[..., :1, :], post[..., :1, :])
        errors[name] = (keys[..., :256, :] - post).pow(2).mean().item()
    assert errors["prerope+outliers"] < errors["prerope"] < errors["kivi"], errors


def test_kivi_options_parse_name_and_serialize():
    policy = KVPolicy.parse("kivi:2,outliers=4,prerope=0")
    assert policy.key_outliers == 4 and policy.prerope is False and policy.name == "kivi:2,outliers=4,prerope=0"
    assert KVPolicy.from_json(policy.to_json()) == policy == KVPolicy.parse(policy.name)
    assert KVPolicy.parse("kivi:2").key_outliers == 16 and KVPolicy.parse("kivi:4").key_outliers == 0
    model = make_tiny_model("llama", num_hidden_layers=2)
    assert KVPolicy.parse("kivi:2").cache_for(model).layers[0].rope is not None
    assert policy.cache_for(model).layers[0].rope is None
    with pytest.raises(ConfigError, match="prerope is 0"):
        KVPolicy.parse("kivi:2,prerope=2")
    with pytest.raises(ConfigError, match="outliers=-1"):
        KVPolicy.parse("kivi:2,outliers=-1")
