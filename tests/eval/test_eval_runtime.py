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
