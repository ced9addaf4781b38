"""Retrieval exercises mixed into distillation data: the facts are in the text, the questions at the end
answer them, lengths are kept, the choice is seeded."""
from __future__ import annotations

import random
import re

import pytest
import torch

from compresskit.calib import build_samples, retrieval_exercise, with_retrieval


@pytest.fixture(scope="module")
def windows(tiny_tokenizer):
    return build_samples(tiny_tokenizer, "builtin", 6, 1000, seed=0)


@pytest.mark.parametrize("seed", range(6))
def test_an_exercise_hides_facts_and_asks_for_them(tiny_tokenizer, windows, seed):
    x = retrieval_exercise(tiny_tokenizer, windows[0], random.Random(seed))
    assert x.shape == windows[0].shape and x.dtype == windows.dtype
    text = tiny_tokenizer.decode(x)
    told = re.findall(r"Note that the (.+?) of (\w+) is (\d+)\.", text)
    answers = re.findall(r"Question: What is the (.+?) of (\w+)\? Answer: The \1 of \2 is (\d+)\.", text)
    assert told and text.count("Question:") == len(answers) == len(told)  # one question per fact, all parsed
    assert sorted(answers) == sorted(told)  # every question is answered by its fact
    first_question = text.index("Question:")
    assert all(text.index(f"of {n} is {v}") < first_question for _, n, v in told)  # told before asked
    assert text.rstrip().endswith(".")  # the last answer is complete (the text's tail was dropped, not it)
    plain = tiny_tokenizer.decode(windows[0])
    assert text[:40] == plain[:40] or text.startswith(" Note that")  # the window's own text around the facts


def test_exercises_hold_one_to_three_facts(tiny_tokenizer, windows):
    counts = {len(re.findall("Note that the", tiny_tokenizer.decode(retrieval_exercise(
        tiny_tokenizer, windows[1], random.Random(seed))))) for seed in range(20)}
    assert counts == {1, 2, 3}


def test_the_share_of_exercises_and_its_seed(tiny_tokenizer, windows):
    mixed = with_retrieval(tiny_tokenizer, windows, 0.5, seed=1)
    changed = [i for i in range(len(windows)) if not torch.equal(mixed[i], windows[i])]
    assert len(changed) == 3 and mixed.shape == windows.shape
    assert torch.equal(with_retrieval(tiny_tokenizer, windows, 0.5, seed=1), mixed)  # deterministic
    assert torch.equal(with_retrieval(tiny_tokenizer, windows, 0.0), windows)
    with pytest.raises(ValueError, match=r"fraction=1.5 and repeat=0.0 must lie in \[0, 1\]"):
        with_retrieval(tiny_tokenizer, windows, 1.5)


def test_too_short_a_window_is_refused(tiny_tokenizer):
    with pytest.raises(ValueError, match="too short for retrieval exercises"):
        retrieval_exercise(tiny_tokenizer, torch.arange(40), random.Random(0))


def test_a_repeated_haystack_is_one_passage_of_the_window_around_the_facts(tiny_tokenizer, windows):
    """With ``repeat`` the facts and questions are the same kind, and everything else is one 16-64 token
    passage of the window, over and over (as passkey's filler); the other exercises keep the window's text."""
    from compresskit.calib.retrieval import REPEAT_SPAN

    checked = 0
    for seed in range(4):
        x = retrieval_exercise(tiny_tokenizer, windows[2], random.Random(seed), repeat=random.Random(seed + 9))
        assert x.shape == windows[2].shape
        text = tiny_tokenizer.decode(x)
        told = re.findall(r"Note that the (.+?) of (\w+) is (\d+)\.", text)
        answers = re.findall(r"Question: What is the (.+?) of (\w+)\? Answer: The \1 of \2 is (\d+)\.", text)
        assert told and sorted(answers) == sorted(told)
        ids = x.tolist()
        # the haystack before the first fact repeats with a period in the span range, and is the window's text
        first = re.search(r" Note that", text).start()
        head = tiny_tokenizer(text[:first], add_special_tokens=False)["input_ids"]
        if len(head) < 3 * REPEAT_SPAN[1]:
            continue
        head = ids[:len(head) - 2]
        period = next(p for p in range(REPEAT_SPAN[0], REPEAT_SPAN[1] + 1)
                      if all(head[i] == head[i + p] for i in range(len(head) - p)))
        unit = windows[2].tolist()
        assert any(unit[o:o + period] == head[:period] for o in range(len(unit) - period))
        checked += 1
    assert checked >= 2  # most seeds put the first fact past three passages
    # the share: round(repeat x exercises) of them, the rest as without repeat (the same windows chosen)
    plain = with_retrieval(tiny_tokenizer, windows, 1.0, seed=5)
    half = with_retrieval(tiny_tokenizer, windows, 1.0, seed=5, repeat=0.5)
    same = [torch.equal(plain[i], half[i]) for i in range(len(windows))]
    assert same.count(False) == 3


def test_depth_keeps_the_facts_in_the_first_share_of_the_text(tiny_tokenizer, windows):
    """``depth=0.3``: every fact starts within the first 30% of the text (plus the facts before it), so it
    is asked for from further away; the default spreads them over the whole window."""
    def fact_positions(x):
        ids, probe = x.tolist(), tiny_tokenizer(" Note that the", add_special_tokens=False)["input_ids"]
        return [i for i in range(len(ids) - len(probe)) if ids[i:i + len(probe)] == probe]

    shallow, anywhere = [], []
    for seed in range(12):
        x = retrieval_exercise(tiny_tokenizer, windows[3], random.Random(seed), depth=0.3)
        assert x.shape == windows[3].shape
        text = tiny_tokenizer.decode(x)
        assert sorted(re.findall(r"Answer: The (.+?) of (\w+) is (\d+)\.", text)) == sorted(
            re.findall(r"Note that the (.+?) of (\w+) is (\d+)\.", text))
        shallow += fact_positions(x)
        anywhere += fact_positions(retrieval_exercise(tiny_tokenizer, windows[3], random.Random(seed)))
    assert shallow and max(shallow) <= 0.3 * 1000 + 3 * 25  # 3 facts of < 25 tokens each may come before one
    assert max(anywhere) > 0.5 * 1000  # without depth some fact lands past the middle
    mixed = with_retrieval(tiny_tokenizer, windows, 1.0, seed=2, depth=0.3)
    assert max(p for x in mixed for p in fact_positions(x)) <= 0.3 * 1000 + 3 * 25
    assert torch.equal(with_retrieval(tiny_tokenizer, windows, 1.0, seed=2, depth=1.0),
                       with_retrieval(tiny_tokenizer, windows, 1.0, seed=2))  # the default is depth 1
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match=f"depth={bad} must lie in"):
            retrieval_exercise(tiny_tokenizer, windows[3], random.Random(0), depth=bad)
