"""KV-cache policies in the Python API (re-exported by compresskit.api): the kvcache room's policies, plus
what needs more than the room: ``retrieval-heads`` budgets from the prune room's answer-loss head scores on
the eval room's passkey prompts.

    with compresskit.compress_kv(model, "retrieval-heads:0.5", tokenizer=tok):
        model.generate(...)
"""
from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn

from .core.arch import get_arch
from .core.errors import ConfigError
from .eval.passkey import KEY_MAX, KEY_MIN, passkey_prompt
from .core.record import record_of
from .kvcache import KVPolicy, cache_shape, layout_bytes
from .kvcache import attach_kv as _attach_kv
from .kvcache import compress_kv as _compress_kv
from .prune import answer_loss_scores, probe_from_answer

PROBE_LENGTH, PROBE_SAMPLES = 2048, 4
CARD_LENGTHS = (4096, 8192, 32768)


def passkey_probes(model: nn.Module, tokenizer: Any, length: int, samples: int, seed: int) -> list:
    """Needle probes for retrieval-head scoring: passkey prompts of ``length`` tokens (capped at the model's
    context) with needles spread over depths 5-95%, keys drawn from ``seed`` (keep it apart from the
    evaluation's), the key's tokens as the teacher-forced answer."""
    context = getattr(model.config, "max_position_embeddings", None) or length
    length = min(length, context - 8)
    rng = random.Random(seed)
    probes = []
    for i in range(samples):
        key, depth = rng.randint(KEY_MIN, KEY_MAX), 0.5 if samples == 1 else 0.05 + 0.9 * i / (samples - 1)
        prompt = passkey_prompt(tokenizer, length, depth, key)
        answer = list(tokenizer(" " + str(key), add_special_tokens=False)["input_ids"])
        probes.append(probe_from_answer(prompt, answer))
    return probes


def kv_head_scores(model: nn.Module, tokenizer: Any, *, length: int = PROBE_LENGTH, samples: int = PROBE_SAMPLES,
                   seed: int = 7919, progress: Callable[..., None] | None = None) -> torch.Tensor:
    """``[layers, kv_heads]`` retrieval scores: the answer-loss score of each query head (how much the passkey
    answer's loss rises without it, `compresskit.prune`'s scorer) summed over the query heads sharing a KV
    head (dropping a KV head's tokens removes them all)."""
    spec = get_arch(model)
    scores = answer_loss_scores(model, spec, passkey_probes(model, tokenizer, length, samples, seed),
                                progress=progress)
    return scores.view(scores.shape[0], cache_shape(model.config)["kv_heads"], -1).sum(-1)


def resolve_kv(model: nn.Module, tokenizer: Any, policy: "str | KVPolicy | dict | None", *,
               scores: torch.Tensor | None = None, **scoring: Any) -> KVPolicy | None:
    """``policy`` ready to attach: for ``retrieval-heads`` without its heads, score the model's KV heads
    (`kv_head_scores` with ``scoring``, or ``scores`` computed before) and keep the top ``share * (1 - ratio)``
    of them whole. Other policies as they are."""
    if policy is None:
        return None
    policy = KVPolicy.parse(policy)
    if policy.press != "retrieval-heads" or policy.options.get("heads"):
        return policy
    if scores is None and tokenizer is None:
        raise ConfigError("retrieval-heads scores the model's heads on passkey prompts: pass tokenizer=tok")
    scores = kv_head_scores(model, tokenizer, **scoring) if scores is None else scores
    press = policy.build()
    count = max(1, round(press.share * (1 - policy.ratio) * scores.numel()))
    flat = scores.flatten().topk(count).indices
    heads = sorted((int(i) // scores.shape[1], int(i) % scores.shape[1]) for i in flat)
    return KVPolicy(**{**policy.__dict__, "options": {**policy.options, "heads": [list(h) for h in heads]}})


def attach_kv(model: nn.Module, policy: "str | KVPolicy | dict | None", tokenizer: Any = None) -> KVPolicy | None:
    """From now on ``model.generate(...)`` compresses its KV cache with ``policy`` (None: the full cache);
    ``tokenizer`` is needed only to score retrieval heads. Returns the policy it replaced."""
    return _attach_kv(model, resolve_kv(model, tokenizer, policy))


@contextmanager
def compress_kv(model: nn.Module, policy: "str | KVPolicy | dict", tokenizer: Any = None) -> Iterator[KVPolicy]:
    """Within the context ``model.generate(...)`` compresses its KV cache after prefill with ``policy``
    (``"snapkv:0.5"``, ``"ada-snapkv:0.5"``, ``"tova:0.5,interval=256"``, ``"retrieval-heads:0.5"`` (needs
    ``tokenizer``), ``"kivi:4"``, ``"snapkv:0.5+kivi:4"``) and decodes at the original positions; on exit the
    model has the policy it had before."""
    with _compress_kv(model, resolve_kv(model, tokenizer, policy)) as attached:
        yield attached


def kv_memory(model: nn.Module, policy: "str | KVPolicy | dict | None", lengths: tuple[int, ...] = CARD_LENGTHS,
              dtype: str | None = None) -> dict[str, Any]:
    """Bytes of the full cache and of ``policy``'s cache after a prompt of each of ``lengths`` tokens (and one
    generated token), measured on the cache layout (`compresskit.kvcache.layout_bytes`) in ``dtype`` (default:
    the checkpoint's storage dtype, else the model's): ``{"dtype", "rows": [{"tokens", "full", "policy"}]}``."""
    policy = KVPolicy.parse(policy) if policy is not None else None
    name = dtype or record_of(model).source.dtype or str(next(model.parameters()).dtype).removeprefix("torch.")
    torch_dtype = getattr(torch, name, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise ConfigError(f"dtype {name!r} is not a torch dtype (e.g. bfloat16, float32)")
    shape = {**cache_shape(model.config), "dtype": torch_dtype}
    rows = [{"tokens": n, "full": layout_bytes(None, tokens=n, **shape),
             "policy": layout_bytes(policy, tokens=n, **shape) if policy is not None else None} for n in lengths]
    return {"dtype": name, "rows": rows}
