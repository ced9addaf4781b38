"""Batched greedy generation: left-padded prompts of different lengths continue exactly as they do alone."""
from __future__ import annotations

import pytest
import torch

from compresskit.core.errors import ConfigError
from compresskit.eval._runtime import eval_mode, generate_greedy


def test_a_batch_continues_each_prompt_as_it_does_alone(tiny_llama, tiny_tokenizer):
    torch.manual_seed(0)
    prompts = [torch.randint(1, 320, (n,)).tolist() for n in (37, 90, 64, 128, 11)]
    with eval_mode(tiny_llama):
        alone = [generate_greedy(tiny_llama, tiny_tokenizer, [p], 8, batch_size=1)[0] for p in prompts]
        done: list[int] = []
        batched = generate_greedy(tiny_llama, tiny_tokenizer, prompts, 8, batch_size=3, progress=done.append)
    assert batched == alone and done == [3, 2]
    assert len({len(a) for a in alone}) >= 1 and any(a.strip() for a in alone)  # it did generate text


def test_batch_size_must_be_positive(tiny_llama, tiny_tokenizer):
    with pytest.raises(ConfigError, match="batch_size"):
        generate_greedy(tiny_llama, tiny_tokenizer, [[1, 2, 3]], 2, batch_size=0)


def test_a_settled_prompt_stops_where_its_check_holds_and_the_others_run_on(tiny_llama, tiny_tokenizer):
    torch.manual_seed(1)
    prompts = [torch.randint(1, 320, (n,)).tolist() for n in (40, 64, 23)]
    with eval_mode(tiny_llama):
        full = generate_greedy(tiny_llama, tiny_tokenizer, prompts, 12, batch_size=3)
        seen: list[str] = []

        def after_two_words(text: str) -> bool:
            seen.append(text)
            return len(text.split()) >= 2

        never = [lambda text: False] * 3
        assert generate_greedy(tiny_llama, tiny_tokenizer, prompts, 12, batch_size=3, settled=never) == full
        early = generate_greedy(tiny_llama, tiny_tokenizer, prompts, 12, batch_size=3,
                                settled=[after_two_words, lambda text: False, lambda text: False])
    assert early[1:] == full[1:]  # the other rows are untouched
    assert len(full[0].split()) > 2, "the test needs a first continuation longer than two words"
    assert full[0].startswith(early[0]) and len(early[0].split()) == 2  # it stopped at the first text that held
    assert seen and all(full[0].startswith(t) for t in seen)  # the checks saw the row's own text so far
    with pytest.raises(ValueError, match="2 settled checks for 3 prompts"):
        generate_greedy(tiny_llama, tiny_tokenizer, prompts, 2, settled=never[:2])
