"""Passkey prompt construction, exact-match scoring with honest fake models, and an end-to-end run."""
from __future__ import annotations

import re

import pytest
import torch
from _fake_lm import FakeLM  # tests/eval/_fake_lm.py

from compresskit.eval import PasskeyResult, passkey, passkey_prompt
from compresskit.eval.passkey import FILLER, NEEDLE, PREFIX, SUFFIX

KEY = 48213


class ReadingModel(FakeLM):
    """Fake LM that reads the key out of the prompt and answers ``answer.format(key=...)``."""

    def __init__(self, tokenizer, answer: str = " {key}. Remember"):
        super().__init__(tokenizer, self.read)
        self.template = answer

    def read(self, prompt: str) -> str:
        key = int(re.search(r"The pass key is (\d+)\.", prompt).group(1))
        return self.template.format(key=key, other=key + 1)


def test_prompt_fits_and_is_close(tiny_tokenizer):
    unit = len(tiny_tokenizer(FILLER, add_special_tokens=False)["input_ids"])
    for length in (160, 257, 500, 1000):
        ids = passkey_prompt(tiny_tokenizer, length, 0.5, KEY)
        assert len(ids) <= length
        assert length - len(ids) <= unit + 2, (length, len(ids), unit)
        text = tiny_tokenizer.decode(ids)
        assert text.startswith(PREFIX) and text.endswith(SUFFIX)
        assert NEEDLE.format(key=KEY) in text


def test_prompt_needle_depth(tiny_tokenizer):
    fractions = []
    for depth in (0.0, 0.25, 0.5, 0.75, 1.0):
        text = tiny_tokenizer.decode(passkey_prompt(tiny_tokenizer, 600, depth, KEY))
        start = text.index(NEEDLE.format(key=KEY))
        filler_chars = len(text) - len(PREFIX) - len(SUFFIX) - len(NEEDLE.format(key=KEY))
        fractions.append((start - len(PREFIX)) / filler_chars)
    assert fractions[0] == 0.0 and fractions[-1] == pytest.approx(1.0)
    assert fractions == sorted(fractions) and len(set(fractions)) == len(fractions)
    tol = len(FILLER) / filler_chars  # within one filler unit of the requested depth
    for got, want in zip(fractions, (0.0, 0.25, 0.5, 0.75, 1.0)):
        assert abs(got - want) <= tol


def test_prompt_too_short_raises(tiny_tokenizer):
    with pytest.raises(ValueError, match="length=10 is too short"):
        passkey_prompt(tiny_tokenizer, 10, 0.5, KEY)
    with pytest.raises(ValueError, match="depth"):
        passkey_prompt(tiny_tokenizer, 200, 1.5, KEY)


def test_reading_model_scores_100(tiny_tokenizer):
    model, calls = ReadingModel(tiny_tokenizer), []
    model.train()
    res = passkey(model, tiny_tokenizer, 200, trials=4, seed=3, max_new_tokens=7, progress=calls.append)
    assert isinstance(res, PasskeyResult)
    assert res.accuracy == 100.0 and all(t.correct for t in res.trials)
    assert calls == [4] and len(res.trials) == 4  # one batch
    again = passkey(model, tiny_tokenizer, 200, trials=4, seed=3, max_new_tokens=7, batch_size=3, progress=calls.append)
    assert calls == [4, 3, 1] and again.to_dict() == res.to_dict()
    assert [t.depth for t in res.trials] == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
    assert all(10000 <= t.key <= 99999 and t.prediction.strip().startswith(str(t.key)) for t in res.trials)
    assert all(
        {k: c[k] for k in ("training", "inference", "do_sample", "pad", "mask_ok", "max_new_tokens")}
        == dict(training=False, inference=True, do_sample=False, pad=tiny_tokenizer.pad_token_id,
                mask_ok=True, max_new_tokens=7)
        for c in model.calls
    )
    assert model.training  # restored


@pytest.mark.parametrize(
    "answer, expected",
    [
        (" {other}.", 0.0),  # different digits
        (" {key}7", 0.0),  # key plus an extra digit is not an exact match
        (" 1 {key}", 0.0),  # the first run of digits counts
        ("{key}", 100.0),
        (" is: {key}, yes", 100.0),
    ],
)
def test_exact_match_scoring(tiny_tokenizer, answer, expected):
    res = passkey(ReadingModel(tiny_tokenizer, answer), tiny_tokenizer, 170, trials=3)
    assert res.accuracy == expected


def test_depths_and_single_trial(tiny_tokenizer):
    one = passkey(ReadingModel(tiny_tokenizer), tiny_tokenizer, 170, trials=1)
    assert [t.depth for t in one.trials] == [0.5]
    cyc = passkey(ReadingModel(tiny_tokenizer), tiny_tokenizer, 170, trials=5, depths=[0.1, 0.9])
    assert [t.depth for t in cyc.trials] == [0.1, 0.9, 0.1, 0.9, 0.1]
    with pytest.raises(ValueError, match="depths"):
        passkey(ReadingModel(tiny_tokenizer), tiny_tokenizer, 170, depths=[2.0])


def test_tiny_model_end_to_end(tiny_llama, tiny_tokenizer):
    a = passkey(tiny_llama, tiny_tokenizer, 192, trials=3, seed=7, max_new_tokens=5)
    b = passkey(tiny_llama, tiny_tokenizer, 192, trials=3, seed=7, max_new_tokens=5)
    c = passkey(ReadingModel(tiny_tokenizer), tiny_tokenizer, 192, trials=3, seed=8)
    assert 0.0 <= a.accuracy <= 100.0 and len(a.trials) == 3
    assert a.to_dict() == b.to_dict()  # greedy + seeded keys: deterministic
    assert [t.key for t in a.trials] != [t.key for t in c.trials]  # the seed picks the keys
    assert all(t.length == 192 for t in a.trials)
    d = a.to_dict()
    assert d["length"] == 192 and isinstance(d["trials"][0], dict) and set(d["trials"][0]) == {
        "length", "depth", "key", "prediction", "correct"}
