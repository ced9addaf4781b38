"""The row cache: a model scored once per setting; any change of weights or settings misses."""
from __future__ import annotations

import torch
from conftest import TINY_TEXT, make_tiny_model

from compresskit.eval import RowCache, evaluate, model_fingerprint
from compresskit.eval.cache import tokenizer_fingerprint

TEXT = TINY_TEXT * 3


def test_fingerprint_tracks_weights_and_config():
    a, b = make_tiny_model("llama"), make_tiny_model("llama")
    assert model_fingerprint(a) == model_fingerprint(b)  # same seed, same weights
    with torch.no_grad():
        b.model.layers[1].mlp.up_proj.weight[0, 0] += 1e-3
    assert model_fingerprint(a) != model_fingerprint(b)
    c = make_tiny_model("llama")
    c.config.rope_theta = 1234.0
    assert model_fingerprint(a) != model_fingerprint(c)


def test_fingerprint_tracks_activation_quantization():
    """Same packed weights, W4 vs W4A4: the forward differs, so cached rows must not be shared."""
    from compresskit.core.config import QuantConfig
    from compresskit.quant import quantize_rtn

    w4, w4a4 = make_tiny_model("llama"), make_tiny_model("llama")
    quantize_rtn(w4, QuantConfig(wbits=4, group_size=-1, embed_bits=16))
    quantize_rtn(w4a4, QuantConfig(wbits=4, abits=4, group_size=-1, embed_bits=16))
    assert set(w4.state_dict()) == set(w4a4.state_dict())
    assert all(torch.equal(t, w4a4.state_dict()[k]) for k, t in w4.state_dict().items())
    assert model_fingerprint(w4) != model_fingerprint(w4a4)


def test_tokenizer_fingerprint(tiny_tokenizer):
    from conftest import make_tiny_tokenizer

    assert tokenizer_fingerprint(tiny_tokenizer) == tokenizer_fingerprint(make_tiny_tokenizer())
    assert tokenizer_fingerprint(tiny_tokenizer) != tokenizer_fingerprint(make_tiny_tokenizer(vocab_size=300))


def test_second_evaluation_is_served_from_the_cache(tiny_tokenizer, tmp_path, monkeypatch):
    model = make_tiny_model("llama")
    kw = dict(tasks=("ppl", "passkey"), lengths=(192,), text=TEXT, ppl_windows=2, passkey_trials=2)
    first = evaluate(model, tiny_tokenizer, cache=RowCache.for_model(tmp_path, model, tiny_tokenizer), **kw)
    assert not any(r.cached for r in first.rows) and len(list(tmp_path.glob("*.json"))) == 2

    def boom(*a, **k):
        raise AssertionError("the model ran although every row was cached")

    monkeypatch.setattr(model, "forward", boom)
    monkeypatch.setattr(model, "generate", boom)
    units: list[int] = []
    second = evaluate(model, tiny_tokenizer, cache=RowCache.for_model(tmp_path, model, tiny_tokenizer),
                      progress=units.append, **kw)
    assert all(r.cached for r in second.rows) and sum(units) == 2 + 2  # the bar still reaches its total
    assert [(r.task, r.length, r.score, r.details) for r in second.rows] == \
        [(r.task, r.length, r.score, r.details) for r in first.rows]


def test_changed_settings_or_weights_miss(tiny_tokenizer, tmp_path):
    model = make_tiny_model("llama")
    kw = dict(tasks=("passkey",), lengths=(192,), text=TEXT, passkey_trials=2)
    evaluate(model, tiny_tokenizer, cache=RowCache.for_model(tmp_path, model, tiny_tokenizer), **kw)
    again = evaluate(model, tiny_tokenizer, cache=RowCache.for_model(tmp_path, model, tiny_tokenizer),
                     **{**kw, "passkey_trials": 3})
    assert not again.rows[0].cached and len(again.rows[0].details["trials"]) == 3
    with torch.no_grad():
        model.model.norm.weight.mul_(1.5)
    changed = evaluate(model, tiny_tokenizer, cache=RowCache.for_model(tmp_path, model, tiny_tokenizer), **kw)
    assert not changed.rows[0].cached


def test_unreadable_entry_is_a_miss(tiny_tokenizer, tmp_path):
    model = make_tiny_model("llama")
    cache = RowCache.for_model(tmp_path, model, tiny_tokenizer)
    key = cache.key("passkey", 192, {"trials": 1, "seed": 0})
    (tmp_path / f"{key}.json").write_text("{not json")
    assert cache.get(key) is None
