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


def test_an_exercise_hides_facts_and_asks_for_them(tiny_tokenizer, windows):
    x = retrieval_exercise(tiny_tokenizer, windows[0], random.Random(3))
    assert x.shape == windows[0].shape and x.dtype == windows.dtype
    text = tiny_tokenizer.decode(x)
    facts = dict(((w, n), v) for w, n, v in re.findall(r"Note that the (.+?) of (\w+) is (\d+)\.", text))
    answers = re.findall(r"Question: What is the (.+?) of (\w+)\? Answer: The \1 of \2 is (\d+)\.", text)
    assert 1 <= len(facts) <= 3 and len(answers) == len(facts)
    assert {(w, n): v for w, n, v in answers} == facts  # every question is answered by its fact
    first_question = text.index("Question:")
    assert all(text.index(f"of {n} is {v}") < first_question for (_, n), v in facts.items())  # told before asked
    assert text.rstrip().endswith(".")  # the last answer is complete (the text's tail was dropped, not it)


def test_the_share_of_exercises_and_its_seed(tiny_tokenizer, windows):
    mixed = with_retrieval(tiny_tokenizer, windows, 0.5, seed=1)
    changed = [i for i in range(len(windows)) if not torch.equal(mixed[i], windows[i])]
    assert len(changed) == 3 and mixed.shape == windows.shape
    assert torch.equal(with_retrieval(tiny_tokenizer, windows, 0.5, seed=1), mixed)  # deterministic
    assert torch.equal(with_retrieval(tiny_tokenizer, windows, 0.0), windows)
    with pytest.raises(ValueError, match=r"fraction=1.5 must lie in \[0, 1\]"):
        with_retrieval(tiny_tokenizer, windows, 1.5)


def test_too_short_a_window_is_refused(tiny_tokenizer):
    with pytest.raises(ValueError, match="too short for retrieval exercises"):
        retrieval_exercise(tiny_tokenizer, torch.arange(40), random.Random(0))
