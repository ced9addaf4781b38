"""Eviction presses against references computed another way, the evicting cache's positions and bytes, and
bad policies."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_model
from transformers.cache_utils import Cache, DynamicLayer

from compresskit.core.errors import ConfigError, InputError
from compresskit.kvcache import (
    KnormPress, KVPolicy, SnapKVPress, StreamingLLMPress, TOVAPress, cache_bytes, compress_kv, evicting_cache,
    keep_indices,
)

IDS = torch.randint(0, 300, (1, 48), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def model():
    return make_tiny_model("llama", num_hidden_layers=2)  # 4 query heads over 2 KV heads (GQA)


def _layer_inputs(model, layer: int = 1):
    """The hidden states entering ``layer``'s attention, its RoPE and its cached keys / values."""
    seen = {}
    attn = model.model.layers[layer].self_attn

    def grab(module, args, kwargs):
        seen["hidden"], seen["rope"] = kwargs["hidden_states"], kwargs["position_embeddings"]

    h = attn.register_forward_pre_hook(grab, with_kwargs=True)
    cache = Cache(layers=[DynamicLayer() for _ in model.model.layers])
    with torch.no_grad():
        model(IDS, cache=cache, use_cache=True)
    h.remove()
    return attn, seen["hidden"], seen["rope"], cache.layers[layer].keys, cache.layers[layer].values


def _eager_attention(model, layer: int = 1) -> torch.Tensor:
    """``[heads, queries, keys]`` attention weights of ``layer`` from transformers' eager attention."""
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        out = model(IDS, output_attentions=True)
    model.config._attn_implementation = "sdpa"
    return out.attentions[layer][0]


def test_knorm_scores_are_minus_the_key_norms(model):
    attn, hidden, rope, keys, values = _layer_inputs(model)
    scores = KnormPress(0.5).score(attn, hidden, rope, keys, values)
    assert scores.shape == keys.shape[:3]
    torch.testing.assert_close(scores, -torch.linalg.vector_norm(keys, dim=-1))


def test_streaming_keeps_the_sinks_and_the_most_recent_tokens(model):
    attn, hidden, rope, keys, values = _layer_inputs(model)
    kept = keep_indices(StreamingLLMPress(0.5, n_sink=4).score(attn, hidden, rope, keys, values), 0.5)
    expected = list(range(4)) + list(range(48 - 20, 48))  # 24 kept: 4 sinks + the last 20
    assert kept.shape == (1, 2, 24) and all(kept[0, h].tolist() == expected for h in range(2))


def test_snapkv_scores_match_eager_attention_averaged_over_the_window_and_the_group(model):
    attn, hidden, rope, keys, values = _layer_inputs(model)
    weights = _eager_attention(model)  # [4 heads, 48, 48]
    w = 8
    per_head = weights[:, -w:, :].mean(dim=1)  # the window's attention, per query head
    reference = per_head.view(2, 2, 48).mean(dim=1)  # averaged over the 2 query heads of each KV head
    reference = F.avg_pool1d(reference.unsqueeze(1), 5, stride=1, padding=2, count_include_pad=False).squeeze(1)
    scores = SnapKVPress(0.5, window=w, kernel=5).score(attn, hidden, rope, keys, values)[0]
    torch.testing.assert_close(scores[:, :-w], reference[:, :-w], rtol=1e-4, atol=1e-6)
    assert bool((scores[:, -w:] > scores[:, :-w].max()).all())  # the window itself is kept


def test_tova_scores_are_the_last_tokens_attention(model):
    attn, hidden, rope, keys, values = _layer_inputs(model)
    reference = _eager_attention(model)[:, -1, :].view(2, 2, 48).mean(dim=1)
    scores = TOVAPress(0.5).score(attn, hidden, rope, keys, values)[0]
    torch.testing.assert_close(scores[:, :-1], reference[:, :-1], rtol=1e-4, atol=1e-6)


def test_ratio_zero_gives_the_same_logits_and_tokens_as_no_press(model):
    with torch.no_grad():
        full = model(IDS).logits
        cache = evicting_cache(2)
        with compress_kv(model, "snapkv:0"):
            same = model(IDS, cache=cache, use_cache=True).logits
    assert torch.equal(full, same)
    ref = model.generate(IDS, max_new_tokens=6, do_sample=False, pad_token_id=0)
    with compress_kv(model, "streaming:0"):
        assert torch.equal(model.generate(IDS, max_new_tokens=6, do_sample=False, pad_token_id=0), ref)
    assert "generate" not in model.__dict__  # the context leaves the model as it was


def test_decoding_after_eviction_uses_the_original_positions(model):
    """The next token after a compressed prefill is placed at position len(prompt), not at the number of
    tokens the cache holds: compare with the same kept keys in a plain cache and explicit positions."""
    cache = evicting_cache(2)
    nxt = torch.tensor([[7]])
    with torch.no_grad(), compress_kv(model, "snapkv:0.5,window=8"):
        model(IDS, cache=cache, use_cache=True)
        held = cache.layers[0].held()
        plain = Cache(layers=[DynamicLayer() for _ in range(2)])
        for src, dst in zip(cache.layers, plain.layers):
            dst.update(src.keys.clone(), src.values.clone())
        got = model(nxt, cache=cache, use_cache=True).logits
    assert held == 24 and cache.layers[0].get_seq_length() == 49
    with torch.no_grad():
        at_original = model(nxt, cache=plain, position_ids=torch.tensor([[48]]), use_cache=True).logits
    torch.testing.assert_close(got, at_original, rtol=1e-5, atol=1e-6)
    for src, dst in zip(cache.layers, plain.layers):
        dst.crop(-1)  # drop the token just added, then place it at the held length instead
    with torch.no_grad():
        at_held = model(nxt, cache=plain, position_ids=torch.tensor([[held]]), use_cache=True).logits
    assert not torch.allclose(got, at_held, atol=1e-4)  # positions from the cache length would differ


def test_measured_bytes_are_the_tensors_held(model):
    cache = evicting_cache(2)
    with compress_kv(model, "knorm:0.75"):
        model.generate(IDS, max_new_tokens=4, do_sample=False, pad_token_id=0, cache=cache)
    held = cache.layers[0].held()
    assert held == 12 + 3  # a quarter of the 48 prompt tokens, then 3 decoded ones cached
    per_token = 2 * 2 * 2 * 16 * 4  # layers x (k, v) x kv heads x head_dim x fp32 bytes
    assert cache_bytes(cache) == held * per_token == sum(
        t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))


@pytest.mark.parametrize("spec,needle", [
    ("snapkv:1.0", "must lie in [0, 1)"),
    ("snapkv:-0.1", "must lie in [0, 1)"),
    ("h2o:0.5", "unknown KV press 'h2o'; known: random, knorm, streaming, snapkv, tova"),
    ("snapkv", "expected NAME:RATIO"),
    ("snapkv:half", "'half' is not a number"),
    ("snapkv:0.5,size=3", "snapkv has no option(s) ['size']"),
    ("snapkv:0.5+tova:0.5", "one eviction press at most"),
    ("kivi:3", "bits=3 is not supported; use 2, 4 or 8"),
    ("kivi:4,window=2", "kivi takes the bits (2, 4, 8) and the options group, residual, sink"),
])
def test_bad_policies_are_one_clear_error(spec, needle):
    with pytest.raises(ConfigError) as e:
        KVPolicy.parse(spec)
    assert needle in str(e.value)


def test_a_policy_round_trips_through_json():
    policy = KVPolicy.parse("snapkv:0.25,window=32")
    assert policy.name == "snapkv:0.25,window=32" and KVPolicy.from_json(policy.to_json()) == policy


def _counting_generate(model):
    """Wrap ``model.generate`` (before a policy is attached) to record the batch size of each call."""
    calls, inner = [], model.generate

    def generate(*args, **kwargs):
        ids = args[0] if args else kwargs["input_ids"]
        calls.append(ids.shape[0])
        return inner(*args, **kwargs)

    model.generate = generate
    return calls


@pytest.mark.parametrize("spec, batches", [("snapkv:0.5,window=8", [2, 1]), ("ada-snapkv:0.5,window=8", [1, 1, 1])])
def test_a_left_padded_batch_continues_as_each_prompt_alone(model, spec, batches):
    """Equal-length prompts share one unpadded batch (per-head budgets: one prompt each); the result is laid out
    as transformers lays out a padded batch: the padded prompts, then the new tokens."""
    short = IDS[:, 8:]
    ids = torch.cat([IDS, torch.cat([torch.zeros(1, 8, dtype=torch.long), short], dim=1), IDS.flip(1)])
    mask = torch.ones_like(ids)
    mask[1, :8] = 0
    calls = _counting_generate(model)
    with compress_kv(model, spec):
        alone = [model.generate(p, max_new_tokens=4, do_sample=False, pad_token_id=0)
                 for p in (IDS, short, IDS.flip(1))]
        calls.clear()
        batch = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert calls == batches
    assert torch.equal(batch[:, :48], ids)
    for row, single in enumerate(alone):
        assert torch.equal(batch[row, 48:], single[0, single.shape[1] - 4:])


def test_a_batch_kv_compression_cannot_split_is_refused(model):
    ids = torch.cat([IDS, IDS])
    right = torch.ones_like(ids)
    right[1, -3:] = 0
    with compress_kv(model, "snapkv:0.5"), pytest.raises(InputError, match="left padding"):
        model.generate(ids, attention_mask=right, max_new_tokens=2, pad_token_id=0)
    left = torch.ones_like(ids)
    left[1, :3] = 0
    with compress_kv(model, "snapkv:0.5"), pytest.raises(InputError, match="return_dict_in_generate"):
        model.generate(ids, attention_mask=left, max_new_tokens=2, pad_token_id=0, return_dict_in_generate=True)


def test_a_sliding_window_model_is_refused_and_a_press_must_score():
    windowed = make_tiny_model("mistral")  # sliding_window=4096 in its config
    with pytest.raises(InputError, match="sliding-window attention"):
        with compress_kv(windowed, "snapkv:0.5"):
            pass
    assert "generate" not in windowed.__dict__
    with compress_kv(make_tiny_model("mistral", sliding_window=None), "snapkv:0.5") as policy:
        assert policy.name == "snapkv:0.5"
    from compresskit.kvcache import Press

    with pytest.raises(TypeError, match="abstract"):
        Press(0.5)


def test_a_compressed_cache_refuses_cropping(model):
    cache = evicting_cache(2)
    with torch.no_grad(), compress_kv(model, "snapkv:0.5"):
        model(IDS, cache=cache, use_cache=True)
    with pytest.raises(InputError, match="cannot be cropped"):
        cache.crop(-1)


def test_cache_bytes_count_tensors_inside_lists_tuples_and_dicts():
    layer = DynamicLayer()
    layer.keys = torch.zeros(2, 3)  # 24 bytes
    layer.codes = (torch.zeros(4, dtype=torch.uint8), {"scale": torch.zeros(2, dtype=torch.float16)})  # 4 + 4
    layer.heads = [torch.zeros(1, dtype=torch.float64)]  # 8
    assert cache_bytes(Cache(layers=[layer])) == 24 + 4 + 4 + 8
