"""Perplexity against a hand-written per-token cross-entropy reference."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY_TEXT

from compresskit.eval import PerplexityResult, perplexity, perplexity_ids

TEXT = TINY_TEXT * 3  # ~1300 tokens with the tiny tokenizer


def _ids(tok, text: str = TEXT) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def _reference_ppl(model, ids: list[int], seqlen: int, max_windows: int | None = None) -> tuple[float, int]:
    """exp(mean NLL) from a per-window, per-token log-softmax loop (independent of the code under test)."""
    n = len(ids) // seqlen
    if max_windows is not None:
        n = min(n, max_windows)
    nlls: list[float] = []
    with torch.no_grad():
        for w in range(n):
            window = ids[w * seqlen : (w + 1) * seqlen]
            logits = model(torch.tensor([window])).logits[0].double()
            for t in range(seqlen - 1):
                logp = torch.log_softmax(logits[t], dim=-1)
                nlls.append(-float(logp[window[t + 1]]))
    return math.exp(sum(nlls) / len(nlls)), len(nlls)


def test_matches_manual_cross_entropy(tiny_llama, tiny_tokenizer):
    ids = _ids(tiny_tokenizer)
    ref, count = _reference_ppl(tiny_llama, ids, 64)
    res = perplexity(tiny_llama, tiny_tokenizer, TEXT, 64)
    assert isinstance(res, PerplexityResult)
    assert res.windows == len(ids) // 64 and res.seqlen == 64
    assert res.tokens == count == res.windows * 63
    assert res.ppl == pytest.approx(ref, rel=1e-4)
    assert res.nll == pytest.approx(math.log(ref), rel=1e-4)
    # random init over a 320-token vocab: perplexity is near the vocab size, far from 1
    assert 50 < res.ppl < 2000


def test_batch_size_does_not_change_result(tiny_llama, tiny_tokenizer):
    one = perplexity(tiny_llama, tiny_tokenizer, TEXT, 32, max_windows=5, batch_size=1)
    two = perplexity(tiny_llama, tiny_tokenizer, TEXT, 32, max_windows=5, batch_size=2)  # 2 + 2 + 1
    assert two.windows == one.windows == 5
    assert two.ppl == pytest.approx(one.ppl, rel=1e-5)


def test_max_windows_and_progress(tiny_llama, tiny_tokenizer):
    calls: list[int] = []
    res = perplexity(tiny_llama, tiny_tokenizer, TEXT, 32, max_windows=3, batch_size=2, progress=calls.append)
    assert res.windows == 3 and res.tokens == 3 * 31
    assert calls == [2, 1]
    ref, _ = _reference_ppl(tiny_llama, _ids(tiny_tokenizer), 32, max_windows=3)
    assert res.ppl == pytest.approx(ref, rel=1e-4)
    # more windows than the text has: capped at what fits
    assert perplexity(tiny_llama, tiny_tokenizer, TEXT, 256, max_windows=100).windows == len(_ids(tiny_tokenizer)) // 256


def test_remainder_is_dropped(tiny_llama, tiny_tokenizer):
    ids = _ids(tiny_tokenizer)
    exact = perplexity_ids(tiny_llama, torch.tensor(ids[:64]), 64)
    with_tail = perplexity_ids(tiny_llama, torch.tensor(ids[:64 + 40]), 64)
    assert with_tail.windows == 1
    assert with_tail.ppl == pytest.approx(exact.ppl, rel=1e-6)


def test_text_too_short_raises(tiny_llama, tiny_tokenizer):
    with pytest.raises(ValueError, match=r"only \d+ tokens.*seqlen=128"):
        perplexity(tiny_llama, tiny_tokenizer, "The grass is green.", 128)


def test_seqlen_beyond_positions_raises(tiny_llama, tiny_tokenizer):
    with pytest.raises(ValueError, match="seqlen=1024 exceeds model.config.max_position_embeddings=512"):
        perplexity(tiny_llama, tiny_tokenizer, TEXT * 2, 1024)


def test_eval_mode_inference_and_weights_untouched(tiny_llama, tiny_tokenizer):
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    seen: list[tuple[bool, bool]] = []
    hook = tiny_llama.register_forward_pre_hook(
        lambda mod, args: seen.append((mod.training, torch.is_inference_mode_enabled()))
    )
    tiny_llama.train()
    try:
        perplexity(tiny_llama, tiny_tokenizer, TEXT, 64, max_windows=2)
    finally:
        hook.remove()
    assert seen and all(not training and inference for training, inference in seen)
    assert tiny_llama.training  # previous mode restored
    after = tiny_llama.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
