"""transformers' own QuantizedCache (quanto / hqq backends) side by side with compresskit's KIVI cache.

    bash bench/setup_peer_venvs.sh hfq                                 # once: /work/peers/hfq-venv
    /work/peers/hfq-venv/bin/python bench/hf_quantized_cache.py        # defaults: --lengths 2048 --trials 5
    /work/peers/hfq-venv/bin/python bench/hf_quantized_cache.py --lengths 2048,4096 --configs hf-quanto:4,kivi:4

The venv has transformers 5.25 (as the main venv), the backends and compresskit (editable). Every row scores the
embedded model with ``compresskit.evaluate(..., cache=False)`` on passkey and niah_single_1: the hf-* rows with
``model.generate`` wrapped to pass a fresh ``QuantizedCache(backend, config, nbits=N)`` (defaults: group 64,
residual 128, axis 0) as ``cache=`` (5.25's name for ``past_key_values``) to every call; the kivi rows with
``kv="kivi:N"``; ``full`` is the default DynamicCache. Bytes: the cache after a prefill of a passkey prompt of
each length plus 8 decoded tokens (as bench/kvcache.py measures), counted by `held_bytes`: every tensor a cache
layer holds, walking into lists, tuples and dicts (hqq keeps (codes, meta dict with scale / zero)) and into tensor
subclasses through ``__tensor_flatten__`` (quanto's quantized tensors hold packed uint8 data, scale and shift),
each inner tensor's numel x element_size counted once. compresskit's ``cache_bytes`` is recorded beside it.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from _results import write_results  # bench/_results.py (scripts run by path)


DEFAULT_CONFIGS = "full,hf-quanto:4,hf-quanto:2,hf-hqq:4,hf-hqq:2,kivi:4,kivi:2"


def held_bytes(obj, seen: set | None = None) -> int:
    """Bytes of the tensors in ``obj`` (a cache, a layer, a tensor, a container), each storage-level tensor once."""
    import torch
    from transformers.cache_utils import Cache, CacheLayerMixin

    seen = set() if seen is None else seen
    if isinstance(obj, Cache):
        return sum(held_bytes(layer, seen) for layer in obj.layers)
    if isinstance(obj, CacheLayerMixin):
        return sum(held_bytes(v, seen) for v in vars(obj).values())
    if isinstance(obj, (list, tuple)):
        return sum(held_bytes(v, seen) for v in obj)
    if isinstance(obj, dict):
        return sum(held_bytes(v, seen) for v in obj.values())
    if isinstance(obj, torch.Tensor):
        if id(obj) in seen:
            return 0
        seen.add(id(obj))
        if type(obj) is not torch.Tensor and hasattr(obj, "__tensor_flatten__"):  # quanto QTensor / PackedTensor
            names, _ = obj.__tensor_flatten__()
            return sum(held_bytes(getattr(obj, n), seen) for n in names)
        return obj.numel() * obj.element_size()
    return 0


def make_cache(model, config: str):
    """A fresh cache for one generate() call: ``hf-BACKEND:N`` or ``kivi:N`` (None: full / default)."""
    import compresskit
    from transformers import QuantizedCache

    if config.startswith("hf-"):
        backend, nbits = config[3:].split(":")
        return QuantizedCache(backend, model.config, nbits=int(nbits))
    if config.startswith("kivi"):
        return compresskit.api.KVPolicy.parse(config).cache_for(model)
    return None


class generate_with(object):
    """Context manager: model.generate passes a fresh quantized cache (hf-* configs) on every call."""

    def __init__(self, model, config: str):
        self.model, self.config, self.caches = model, config, []

    def __enter__(self):
        if self.config.startswith("hf-"):
            original = self.model.generate

            def generate(*args, **kwargs):
                assert not {"cache", "past_key_values"} & kwargs.keys(), "the caller passes its own cache"
                self.caches.append(make_cache(self.model, self.config))
                return original(*args, cache=self.caches[-1], **kwargs)

            self.model.generate = generate
        return self

    def __exit__(self, *exc):
        self.model.__dict__.pop("generate", None)


def measure(model, tok, length: int, config: str) -> dict:
    """Bytes the cache holds after a prefill of a passkey prompt of ``length`` tokens and 8 decoded tokens."""
    from contextlib import nullcontext

    import compresskit
    import torch
    from compresskit.eval.passkey import passkey_prompt

    ids = torch.tensor([passkey_prompt(tok, length, 0.5, 12345)])
    cache = make_cache(model, config) or compresskit.api.evicting_cache(len(model.model.layers))
    policy = config if config.startswith("kivi") else None
    with compresskit.compress_kv(model, policy) if policy else nullcontext():
        model.generate(ids, max_new_tokens=8, do_sample=False, cache=cache, pad_token_id=tok.eos_token_id)
    layer = cache.layers[0]
    return {"held_bytes": held_bytes(cache), "cache_bytes": compresskit.api.cache_bytes(cache),
            "layer_type": type(layer).__name__, "tokens": int(cache.get_seq_length()),
            "fp_residual_tokens": int(layer.keys.shape[-2]) if getattr(layer, "keys", None) is not None
            and layer.keys.dim() == 4 else 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--lengths", default="2048")
    ap.add_argument("--tasks", default="passkey,niah_single_1")
    ap.add_argument("--configs", default=DEFAULT_CONFIGS)
    ap.add_argument("--trials", type=int, default=5, help="passkey trials and RULER samples per length")
    ap.add_argument("--out", default="bench/results/hf_quantized_cache")
    args = ap.parse_args()

    import importlib.metadata as md

    import torch

    torch.set_num_threads(1)
    import compresskit

    model, tok = compresskit.load_model(args.model)
    lengths, tasks = [int(n) for n in args.lengths.split(",")], args.tasks.split(",")
    versions = {}
    for p in ("torch", "transformers", "compresskit", "hqq", "optimum-quanto"):
        try:
            versions[p] = md.version(p)
        except md.PackageNotFoundError:
            versions[p] = None
    for config in args.configs.split(","):  # one-time costs (quanto may build its C++ extension) out of the timings
        if config.startswith("hf-"):
            with torch.no_grad():
                measure(model, tok, 256, config)
    rows, table, t_start = [], [], time.perf_counter()
    for config in args.configs.split(","):
        t0 = time.perf_counter()
        with torch.no_grad():
            sizes = {n: measure(model, tok, n, config) for n in lengths}
        with generate_with(model, config) as wrapped:
            report = compresskit.evaluate(model, tok, tasks=tasks, lengths=lengths, passkey_trials=args.trials,
                                          samples=args.trials, cache=False,
                                          kv=config if config.startswith("kivi") else None)
        seconds = time.perf_counter() - t0
        used = [type(c.layers[0]).__name__ for c in wrapped.caches]
        assert not config.startswith("hf-") or (used and all(c.get_seq_length() > 0 for c in wrapped.caches))
        scores = {f"{r.task}@{r.length}": r.score for r in report.rows}
        details = {f"{r.task}@{r.length}": r.details for r in report.rows}
        rows.append({"config": config, "scores": scores, "bytes": sizes, "seconds": seconds,
                     "wrapped_generate_calls": len(used), "cache_layer_types": sorted(set(used)), "details": details})
        table.append([config, *(f"{scores[f'{t}@{n}']:.0f}%" for n in lengths for t in tasks),
                      *(f"{sizes[n]['held_bytes'] / 1e6:.1f}" for n in lengths),
                      *(f"{sizes[n]['cache_bytes'] / 1e6:.1f}" for n in lengths), f"{seconds:.0f}"])
        print(table[-1], {n: (s["cache_bytes"], s["layer_type"], s["fp_residual_tokens"]) for n, s in sizes.items()},
              flush=True)
    head = ["config", *(f"{t} @ {n}" for n in lengths for t in tasks), *(f"cache MB @ {n} (+8)" for n in lengths),
            *(f"cache_bytes() MB @ {n}" for n in lengths), "s"]
    md_rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in table]
    note = (
        f"\n\n{args.model} through compresskit.load_model, fp32 on CPU, 1 thread; "
        f"transformers {versions['transformers']}, torch {versions['torch']}, hqq {versions['hqq']}, "
        f"optimum-quanto {versions['optimum-quanto']}; "
        f"{args.trials} passkey trials / needle samples per length, compresskit.evaluate(..., cache=False). "
        "hf-BACKEND:N: transformers' QuantizedCache(BACKEND, config, nbits=N) at its defaults (group 64, residual "
        "128, axis 0: groups of 64 along head_dim, i.e. per token for keys and values, fp32 scale and shift; the "
        "prompt is quantized in one go at prefill, the fp residual holds only decoded tokens), passed as cache= "
        "(past_key_values) to every generate() call; kivi:N: compresskit's cache (keys per channel, values per "
        "token, group 32, fp16 scales and minima, 128 recent tokens in full precision). full: the default cache. "
        "Cache MB: every tensor the cache's layers hold after prefill + 8 decoded tokens, walking into hqq's meta "
        "dicts and quanto's tensor subclasses (`held_bytes` in the script); cache_bytes() MB: what "
        "compresskit.api.cache_bytes says for the same cache (numel x element_size of the layers' top-level "
        "tensors: a quanto tensor counts at its logical fp32 size, hqq's meta dict is not counted); s: seconds of "
        "the row (bytes + eval, wall clock), after a warm-up generate per hf backend.\n")
    write_results(args.out, "\n".join(md_rows) + note,
                  {"args": vars(args), "versions": versions, "seconds": time.perf_counter() - t_start, "rows": rows},
                  echo=True)


if __name__ == "__main__":
    main()
