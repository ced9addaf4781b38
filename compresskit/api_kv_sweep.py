"""KV-cache policies side by side (re-exported by compresskit.api; `compresskit kv` and bench/kvcache.py):
task scores under each policy, the perplexity of a continuation read after a compressed context, the cache
bytes held after the prompt and at the end of generation, prefill time and decoding speed.

    sweep = compresskit.api.kv_sweep(model, tok, ["snapkv:0.5", "kivi:4"], lengths=[2048, 4096])
    print(sweep.table()); sweep.plot("out/")
"""
from __future__ import annotations

import math
from contextlib import nullcontext
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
from transformers.cache_utils import DynamicCache

from .api_eval import evaluate
from .api_kv import kv_head_scores, resolve_kv
from .api_models import heldout_text
from .core.errors import InputError, MissingDependencyError
from .core.fsutil import atomic_output_dir, write_json_atomic
from .eval import plot_lines
from .kvcache import KVPolicy, cache_bytes, compress_kv

FULL = "full"


@dataclass
class KVRow:
    """One policy at one length: task ``scores`` (0-100), ``ppl`` of the continuation, ``bytes_prompt`` and
    ``bytes_end`` held after the prompt and after ``steps`` generated tokens, ``prefill_s`` (the prompt's
    forward, scoring included) and ``decode_tok_s`` (median over the steps)."""

    policy: str
    length: int
    scores: dict[str, float] = field(default_factory=dict)
    ppl: float | None = None
    bytes_prompt: int | None = None
    bytes_end: int | None = None
    prefill_s: float | None = None
    decode_tok_s: float | None = None


@dataclass
class KVSweep:
    rows: list[KVRow]
    tasks: list[str]
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "tasks": self.tasks, "rows": [asdict(r) for r in self.rows]}

    def table(self) -> str:
        """Markdown: one row per policy and length (the full cache first)."""
        head = ["policy", "length", *(f"{t} %" for t in self.tasks), "continuation ppl", "cache MB (prompt)",
                "cache MB (end)", "prefill s", "decode tok/s"]
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in sorted(self.rows, key=lambda r: (r.length, r.policy != FULL)):
            mb = [None if b is None else b / 1e6 for b in (r.bytes_prompt, r.bytes_end)]
            cells = [*(_fmt(r.scores.get(t), ".0f") for t in self.tasks), _fmt(r.ppl, ".3f"), _fmt(mb[0], ".1f"),
                     _fmt(mb[1], ".1f"), _fmt(r.prefill_s, ".1f"), _fmt(r.decode_tok_s, ".1f")]
            out.append("| " + " | ".join([r.policy, str(r.length), *cells]) + " |")
        return "\n".join(out)

    def write(self, directory: str | Path, overwrite: bool = False) -> list[Path]:
        """``sweep.md``, ``sweep.json`` and the plots (matplotlib; skipped with a note if missing) in a new
        ``directory``, written atomically; an existing one is replaced only with ``overwrite``."""
        with atomic_output_dir(directory, overwrite) as tmp:
            try:
                plots = self.plot(tmp)
                note = "".join(f"\n![{p.stem}]({p.name})" for p in plots)
            except MissingDependencyError as e:
                note = f"\n\n(no plots: {e})"
            (tmp / "sweep.md").write_text(self.table() + "\n" + note + "\n")
            write_json_atomic(tmp / "sweep.json", self.to_dict())
        return [Path(directory) / name for name in ("sweep.md", "sweep.json")]

    def plot(self, directory: str | Path) -> list[Path]:
        """``score_vs_ratio_<task>_<length>.png`` (one line per press, as kvpress plots them; the full cache at
        ratio 0) and ``memory_vs_length.png`` (cache bytes after the prompt, one line per policy)."""
        directory, paths = Path(directory), []
        for task in self.tasks:
            for length in sorted({r.length for r in self.rows}):
                series: dict[str, list[tuple[float, float]]] = {}
                full = [r for r in self.rows if r.policy == FULL and r.length == length and task in r.scores]
                for r in self.rows:
                    p = None if r.policy == FULL else KVPolicy.parse(r.policy)
                    if r.length != length or task not in r.scores or p is None or p.press is None or p.bits:
                        continue
                    label = p.name.split(":")[0]
                    series.setdefault(label, [(0.0, full[0].scores[task])] if full else []).append(
                        (p.ratio, r.scores[task]))
                if series:
                    paths.append(plot_lines(series, directory / f"score_vs_ratio_{task}_{length}.png",
                                            xlabel="compression ratio (share of the prompt's KV dropped)",
                                            ylabel=f"{task} (%)", title=f"{task} at {length} tokens"))
        memory: dict[str, list[tuple[float, float]]] = {}
        for r in self.rows:
            if r.bytes_prompt is not None:
                memory.setdefault(r.policy, []).append((r.length, r.bytes_prompt / 1e6))
        if any(len(v) > 1 for v in memory.values()):
            paths.append(plot_lines(memory, directory / "memory_vs_length.png", xlabel="prompt tokens",
                                    ylabel="KV cache held (MB)", title="KV cache after the prompt", log2x=True))
        return paths


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _prompt(tokenizer: Any, tokens: int, text: str | None = None) -> torch.Tensor:
    ids = tokenizer(text or heldout_text(), add_special_tokens=False)["input_ids"]
    if len(ids) < tokens:
        raise InputError(f"the held-out text has {len(ids)} tokens, fewer than the {tokens} asked; pass a longer text")
    return torch.tensor([ids[:tokens]])


def _cache(model: nn.Module, policy: KVPolicy | None):
    return DynamicCache() if policy is None else policy.cache_for(model)


def _feed(model: nn.Module, cache: Any, ids: torch.Tensor, one_at_a_time: bool) -> torch.Tensor:
    """Logits of ``ids`` read after what ``cache`` holds (token by token for per-head layouts)."""
    if not one_at_a_time:
        return model(ids, cache=cache, use_cache=True).logits
    return torch.cat([model(ids[:, i:i + 1], cache=cache, use_cache=True).logits for i in range(ids.shape[1])], 1)


@torch.no_grad()
def continuation_ppl(model: nn.Module, tokenizer: Any, policy: "KVPolicy | None", length: int,
                     continuation: int = 256, text: str | None = None) -> float:
    """Perplexity of the ``continuation`` tokens that follow a ``length``-token context of the held-out text,
    the context compressed by ``policy`` (None: the full cache) before the continuation is read."""
    ids = _prompt(tokenizer, length + continuation, text).to(next(model.parameters()).device)
    cache = _cache(model, policy)
    with compress_kv(model, policy) if policy is not None else nullcontext():
        last = model(ids[:, :length], cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1:]
        rest = _feed(model, cache, ids[:, length:-1], policy is not None and policy.per_head)
    logits = torch.cat([last, rest], 1)[0].float()
    return math.exp(torch.nn.functional.cross_entropy(logits, ids[0, length:]).item())


@torch.no_grad()
def measure_cache(model: nn.Module, tokenizer: Any, policy: "KVPolicy | None", length: int, steps: int = 16,
                  text: str | None = None) -> dict[str, float]:
    """Bytes the cache holds after a ``length``-token prompt and after ``steps`` greedy tokens; the prompt's
    forward time (scoring included) and the median decoding speed."""
    ids = _prompt(tokenizer, length, text).to(next(model.parameters()).device)
    cache = _cache(model, policy)
    with compress_kv(model, policy) if policy is not None else nullcontext():
        t0 = time.perf_counter()
        nxt = model(ids, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1:].argmax(-1)
        prefill = time.perf_counter() - t0
        prompt_bytes, times = cache_bytes(cache), []
        for _ in range(steps):
            t0 = time.perf_counter()
            nxt = model(nxt, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
            times.append(time.perf_counter() - t0)
    return {"bytes_prompt": prompt_bytes, "bytes_end": cache_bytes(cache), "prefill_s": prefill,
            "decode_tok_s": 1.0 / statistics.median(times) if times else None}


def kv_sweep(model: nn.Module, tokenizer: Any, policies: Sequence["str | KVPolicy | None"], *,
             lengths: Sequence[int] = (2048,), tasks: Sequence[str] = ("passkey", "niah_single_1"),
             trials: int = 5, continuation: int | None = 256, timing: bool = True, steps: int = 16,
             cache: Any = True, progress: Callable[..., None] | None = None) -> KVSweep:
    """Every policy (None or ``"full"``: the full cache) at every length: ``tasks`` through
    `compresskit.evaluate` (``trials`` passkey trials / needle samples), the continuation's perplexity
    (``continuation`` tokens; None skips it) and, with ``timing``, `measure_cache`. retrieval-heads scores the
    model's heads once for the whole sweep."""
    parsed: list[KVPolicy | None] = [None if p in (None, FULL) else KVPolicy.parse(p) for p in policies]
    head_scores = None
    if any(p is not None and p.press == "retrieval-heads" and not p.options.get("heads") for p in parsed):
        head_scores = kv_head_scores(model, tokenizer)
    resolved = [resolve_kv(model, tokenizer, p, scores=head_scores) for p in parsed]
    rows = []
    for policy in resolved:
        for length in lengths:
            name = FULL if policy is None else policy.name
            report = evaluate(model, tokenizer, tasks=list(tasks), lengths=[length], passkey_trials=trials,
                              samples=trials, cache=cache, kv=policy) if tasks else None
            row = KVRow(name, length, {r.task: r.score for r in report.rows} if report else {})
            if continuation:
                row.ppl = continuation_ppl(model, tokenizer, policy, length, continuation)
            if timing:
                for k, v in measure_cache(model, tokenizer, policy, length, steps).items():
                    setattr(row, k, v)
            rows.append(row)
            if progress is not None:
                progress(1, f"{name} @ {length}")
    settings = {"lengths": list(lengths), "trials": trials, "continuation": continuation, "steps": steps,
                "policies": [FULL if p is None else p.name for p in resolved]}
    return KVSweep(rows, list(tasks), settings)
