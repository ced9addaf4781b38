"""Per-head KV budgets: AdaKV selection against a hand-computed reference, the per-head layout against
per-head results computed with uniform caches, its bytes, retrieval-head budgets, decoding-time eviction,
and text fed after a compressed prompt."""
from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model
from transformers.cache_utils import Cache, DynamicLayer

import compresskit
from compresskit.core.errors import ConfigError, InputError
from compresskit.kvcache import KVPolicy, adaptive_keep, cache_bytes, compress_kv, evicting_cache

IDS = torch.randint(0, 300, (1, 48), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def model():
    return make_tiny_model("llama", num_hidden_layers=2)  # 4 query heads over 2 KV heads (GQA)


def test_adaptive_budgets_take_one_top_k_over_the_heads_with_a_floor():
    # head 0 concentrates its attention on two tokens, head 1 spreads it: a budget of 4 per head (8 in all)
    scores = torch.tensor([[[0.5, 0.4, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01],
                            [0.12, 0.13, 0.11, 0.14, 0.15, 0.16, 0.1, 0.09]]])
    kept = adaptive_keep(scores, ratio=0.5, floor=0.25)
    # floor: 1 token each (the best); then the 6 best of the rest overall: 0.4 (h0) and h1's five best
    assert kept[0].tolist() == [0, 1] and kept[1].tolist() == [0, 1, 2, 3, 4, 5]
    assert sum(len(k) for k in kept) == 8
    even = adaptive_keep(scores, ratio=0.5, floor=1.0)  # a floor of the whole share: uniform budgets
    assert [len(k) for k in even] == [4, 4]
    with pytest.raises(InputError, match="batch size 1"):
        adaptive_keep(scores.expand(2, -1, -1), 0.5)


def _attention_output(model, cache, token):
    """The input of layer 0's o_proj (every head's attention output) at one decoding step."""
    seen = {}
    h = model.model.layers[0].self_attn.o_proj.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    with torch.no_grad():
        model(token, cache=cache, use_cache=True)
    h.remove()
    return seen["x"][0, -1].view(4, -1)  # [query heads, head_dim]


def _uniform_cache(model, keep):
    """A plain cache holding, for every KV head, the prompt tokens ``keep``."""
    full = Cache(layers=[DynamicLayer() for _ in range(2)])
    with torch.no_grad():
        model(IDS, cache=full, use_cache=True)
    cache = evicting_cache(2, groups=2)
    for src, dst in zip(full.layers, cache.layers):
        dst.update(src.keys[:, :, keep], src.values[:, :, keep])
        dst.seen = IDS.shape[1]
    return cache


def test_the_per_head_layout_attends_each_head_to_its_own_tokens(model):
    """Head 0 keeps 10 tokens and head 1 keeps 30: the attention output of each head's query group equals
    that of a plain cache holding that head's tokens for every head."""
    a, b = torch.arange(38, 48), torch.cat([torch.arange(0, 20), torch.arange(38, 48)])
    ragged = _uniform_cache(model, torch.arange(48))
    for layer in ragged.layers:
        layer.keep_heads([a, b])
    token = torch.tensor([[5]])
    got = _attention_output(model, ragged, token)
    only_a = _attention_output(model, _uniform_cache(model, a), token)
    only_b = _attention_output(model, _uniform_cache(model, b), token)
    torch.testing.assert_close(got[:2], only_a[:2], rtol=1e-5, atol=1e-6)  # query heads 0-1 read KV head 0
    torch.testing.assert_close(got[2:], only_b[2:], rtol=1e-5, atol=1e-6)
    assert ragged.layers[0].held_per_head() == [11, 31] and ragged.layers[0].get_seq_length() == 49
    per_token = 16 * 4 * 2  # head_dim x fp32 bytes x (k, v)
    assert cache_bytes(ragged) == 2 * (11 + 31) * per_token  # what the heads hold, no padding


def test_adaptive_policy_generates_and_holds_the_budget(model):
    cache = KVPolicy.parse("ada-snapkv:0.5,window=8").make_cache(2, groups=2)
    with compress_kv(model, "ada-snapkv:0.5,window=8"):
        out = model.generate(IDS, max_new_tokens=5, do_sample=False, pad_token_id=0, cache=cache)
    assert out.shape[1] == 53
    counts = cache.layers[1].held_per_head()
    assert sum(counts) == 2 * 24 + 2 * 4  # the layer's budget (half of 48 per head) plus 4 decoded tokens each
    with pytest.raises(InputError, match="needs sdpa attention"):
        model.config._attn_implementation = "eager"
        try:
            with compress_kv(model, "ada-snapkv:0.5"):
                pass
        finally:
            model.config._attn_implementation = "sdpa"


def test_retrieval_heads_keep_everything_and_the_others_share_the_rest(model):
    policy = KVPolicy.parse({"press": "retrieval-heads", "ratio": 0.25, "options": {"heads": [[0, 1], [1, 0]]}})
    cache = policy.make_cache(2, groups=2)
    with compress_kv(model, policy):
        model.generate(IDS, max_new_tokens=1, do_sample=False, pad_token_id=0, cache=cache)
    # 4 KV heads keep 3/4 of the 48 tokens on average; the 2 retrieval heads keep all 48, which leaves the
    # others ((1 - 0.25) * 4 - 2) / (4 - 2) = 1/2 of the prompt: 4 sinks and the 20 newest tokens
    assert cache.layers[0].held_per_head() == [24, 48] and cache.layers[1].held_per_head() == [48, 24]
    assert sum(cache.layers[0].held_per_head() + cache.layers[1].held_per_head()) == 0.75 * 4 * 48
    assert policy.name == "retrieval-heads:0.25"
    with pytest.raises(ConfigError, match="retrieval-heads needs the model's retrieval heads"):
        with compress_kv(model, "retrieval-heads:0.5"):
            model.generate(IDS, max_new_tokens=1, do_sample=False, pad_token_id=0)


def test_retrieval_heads_are_scored_by_the_api_and_saved_in_the_policy(tiny_dir):
    model, tok = compresskit.load_model(str(tiny_dir))
    resolved = compresskit.api.resolve_kv(model, tok, "retrieval-heads:0.5", length=160, samples=2)
    heads = resolved.options["heads"]
    scores = compresskit.api.kv_head_scores(model, tok, length=160, samples=2)
    n = scores.numel()
    assert len(heads) == round(0.5 * 0.5 * n)  # share 0.5 of the kept half
    top = set(scores.flatten().topk(len(heads)).indices.tolist())
    assert {layer * scores.shape[1] + h for layer, h in heads} == top
    assert compresskit.api.KVPolicy.from_json(resolved.to_json()) == resolved
    with pytest.raises(ConfigError, match="pass tokenizer=tok"):
        compresskit.api.resolve_kv(model, None, "retrieval-heads:0.5")


def test_decoding_time_eviction_holds_the_cache_at_its_prompt_size(model):
    cache = evicting_cache(2, groups=2)
    with compress_kv(model, "tova:0.5,interval=4"):
        model.generate(IDS, max_new_tokens=13, do_sample=False, pad_token_id=0, cache=cache)
    layer = cache.layers[0]
    # 24 after the prompt; every 4 generated tokens back to 24; 12 tokens cached (the 13th is not fed back)
    assert layer.target == 24 and layer.held() == 24 and layer.get_seq_length() == 48 + 12
    free = evicting_cache(2, groups=2)
    with compress_kv(model, "tova:0.5"):
        model.generate(IDS, max_new_tokens=13, do_sample=False, pad_token_id=0, cache=free)
    assert free.layers[0].held() == 24 + 12
    for bad in ("ada-snapkv:0.5,interval=4", "snapkv:0.5,interval=4+kivi:4", "snapkv:0.5,interval=0"):
        with pytest.raises(ConfigError, match="decoding-time eviction"):
            KVPolicy.parse(bad)


def test_text_after_a_compressed_prompt_matches_feeding_it_token_by_token(model):
    """A chunk after the compressed prompt is appended whole: its last logits equal those of the same tokens
    fed one at a time (the causal mask over held + new tokens is right)."""
    more = torch.randint(0, 300, (1, 6), generator=torch.Generator().manual_seed(3))
    chunk, step = evicting_cache(2), evicting_cache(2)
    with torch.no_grad(), compress_kv(model, "snapkv:0.5,window=8"):
        model(IDS, cache=chunk, use_cache=True)
        model(IDS, cache=step, use_cache=True)
        at_once = model(more, cache=chunk, use_cache=True).logits[:, -1]
        for i in range(6):
            one = model(more[:, i:i + 1], cache=step, use_cache=True).logits[:, -1]
    torch.testing.assert_close(at_once, one, rtol=1e-4, atol=1e-5)
    assert chunk.layers[0].held() == 24 + 6


@pytest.mark.parametrize("spec", ["snapkv:0.5,window=8", "ada-snapkv:0.5,window=8"])
def test_a_tail_is_read_after_the_context_was_compressed(model, spec):
    """``tail=6``: the context is compressed without its last 6 tokens (the question), which are then read
    whole; the same as compressing the context by hand and generating from it."""
    policy = KVPolicy.parse(f"{spec},tail=6")
    cache = policy.make_cache(2, groups=2)
    with compress_kv(model, policy):
        got = model.generate(IDS, max_new_tokens=4, do_sample=False, pad_token_id=0, cache=cache)
    assert cache.layers[0].get_seq_length() == 48 + 3 and sum(cache.layers[0].held_per_head()) == 2 * (21 + 6 + 3)
    by_hand = KVPolicy.parse(spec).make_cache(2, groups=2)
    with compress_kv(model, spec), torch.no_grad():
        model(IDS[:, :42], cache=by_hand, use_cache=True)
        for i in range(42, 47):
            model(IDS[:, i:i + 1], cache=by_hand, use_cache=True)
        ref = model.generate(IDS, max_new_tokens=4, do_sample=False, pad_token_id=0, cache=by_hand)
    assert torch.equal(got, ref)
    assert KVPolicy.parse("snapkv:0.5,tail=64").name == "snapkv:0.5,tail=64"
    with pytest.raises(ConfigError, match="tail="):
        KVPolicy.parse("kivi:4").__class__(press=None, bits=4, tail=8)
