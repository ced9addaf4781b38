"""A fake causal LM for the generation tasks: ``generate`` answers each row of a (left-padded) batch from
the prompt text a real model would see (``answer(prompt) -> text``), and records how it was called."""
from __future__ import annotations

from collections.abc import Callable

import torch


class FakeLM(torch.nn.Module):
    def __init__(self, tokenizer, answer: Callable[[str], str], skip_special: bool = False):
        super().__init__()
        self.tok, self.answer, self.skip_special = tokenizer, answer, skip_special
        self.proj = torch.nn.Linear(1, 1)  # gives the module a device
        self.calls: list[dict] = []  # one per prompt

    def generate(self, input_ids, attention_mask, max_new_tokens, do_sample, pad_token_id, stopping_criteria=None):
        answers = []
        for ids, mask in zip(input_ids, attention_mask):
            first = int(mask.argmax())  # left padding: pad tokens, masked, then the prompt
            prompt = self.tok.decode(ids[first:].tolist(), skip_special_tokens=self.skip_special)
            self.calls.append(dict(
                prompt=prompt, training=self.training, inference=torch.is_inference_mode_enabled(),
                do_sample=do_sample, pad=pad_token_id, max_new_tokens=max_new_tokens, batch=len(input_ids),
                mask_ok=bool(attention_mask.shape == input_ids.shape and mask[first:].all()
                             and not mask[:first].any() and (ids[:first] == pad_token_id).all())))
            answers.append(self.tok(self.answer(prompt), add_special_tokens=False)["input_ids"])
        width = max(len(a) for a in answers)
        new = torch.tensor([a + [pad_token_id] * (width - len(a)) for a in answers])
        return torch.cat([input_ids, new], dim=1)
