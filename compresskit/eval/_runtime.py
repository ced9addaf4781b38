"""Small runtime helpers shared by the eval tasks (no task logic here).

Models handed to the eval room may hold custom quantized modules, so these helpers only look at
module flags and parameter *metadata* (the device), never at weight values.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from ..core.errors import ConfigError
from ..core.progress import Progress as _Progress

Progress = _Progress | None
"""Optional callback (compresskit.core.progress), called with the number of work units (windows, trials)
just finished."""


@contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Run the body with ``model.eval()`` under ``torch.inference_mode()``; restore the train flag after."""
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        if was_training:
            model.train(True)


def model_device(model: Any) -> torch.device:
    """The device inputs should be placed on: ``model.device`` if present, else the first parameter's."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def report(progress: Progress, units: int) -> None:
    """Forward ``units`` finished units to the optional progress callback."""
    if progress is not None and units > 0:
        progress(units)


def generate_greedy(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
                    batch_size: int = 8, progress: Progress = None,
                    settled: Sequence[Callable[[str], bool]] | None = None) -> list[str]:
    """Greedy continuations of ``prompts`` (token ids), decoded without special tokens, ``batch_size``
    prompts per ``generate`` call. Shorter prompts are left-padded and masked (positions follow the mask),
    so each continuation is the one the prompt gets alone, up to float rounding; decoding a batch reads the
    weights once per token for all its prompts. ``settled`` (one check per prompt, given the text so far):
    a prompt stops once its check is true, so a score that cannot change any more costs no more decoding
    (its continuation then ends there). ``progress`` gets the number of prompts of each batch."""
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be >= 1")
    if settled is not None and len(settled) != len(prompts):
        raise ValueError(f"{len(settled)} settled checks for {len(prompts)} prompts")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device, out = model_device(model), []
    for start in range(0, len(prompts), batch_size):
        chunk = [list(p) for p in prompts[start:start + batch_size]]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), 0 if pad is None else pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, p in enumerate(chunk):
            ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[row, width - len(p):] = 1
        extra = {} if settled is None else {
            "stopping_criteria": _settled_criteria(tokenizer, width, settled[start:start + batch_size])}
        generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                   max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad, **extra)
        out += [tokenizer.decode(g[width:].tolist(), skip_special_tokens=True) for g in generated]
        report(progress, len(chunk))
    return out


def _settled_criteria(tokenizer: Any, width: int, checks: Sequence[Callable[[str], bool]]) -> Any:
    """A transformers stopping criterion: row ``i`` is done once ``checks[i]`` holds for its text after ``width``."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Settled(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            if input_ids.shape[0] != len(checks):
                raise ValueError(f"a batch of {input_ids.shape[0]} rows for {len(checks)} settled checks")
            done = [check(tokenizer.decode(row[width:].tolist(), skip_special_tokens=True))
                    for row, check in zip(input_ids, checks)]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([Settled()])
