"""KV-cache eviction on the embedded model: passkey / needle accuracy and the bytes the cache really holds,
per press and ratio, against the full cache.

    python bench/kvcache.py                                              # defaults below (CPU-sized)
    python bench/kvcache.py --lengths 2048,4096 --policies snapkv:0.5,streaming:0.5 --trials 10

Each row evaluates the model through ``compresskit.evaluate(..., kv=POLICY)`` (every generation under
``compress_kv``; the full cache is the ``full`` row), and measures the cache after a prefill of a passkey
prompt of each length plus 8 decoded tokens with `cache_bytes` (the tensors held, not a ratio).
Writes bench/results/kvcache.{json,md}. Not measured here yet: decode speed, the continuation's perplexity,
kvpress side by side (docs/kvcache.md says what exists).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _results import write_results  # bench/_results.py (scripts run by path)

# bench/kernels.py would shadow the `kernels` package transformers' generate() looks for
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

DEFAULT_POLICIES = ("streaming:0.5,snapkv:0.5,tova:0.5,knorm:0.5,random:0.5,snapkv:0.25,snapkv:0.75,kivi:4,kivi:2,"
                    "snapkv:0.5+kivi:4")


def measured_bytes(model, tok, length: int, policy: str | None) -> int:
    """Bytes the cache holds after a prefill of ``length`` tokens and 8 decoded tokens."""
    from contextlib import nullcontext

    import compresskit
    from compresskit.eval.passkey import passkey_prompt

    import torch

    ids = torch.tensor([passkey_prompt(tok, length, 0.5, 12345)])
    n_layers = len(model.model.layers)
    cache = compresskit.api.KVPolicy.parse(policy).make_cache(n_layers) if policy else compresskit.api.evicting_cache(
        n_layers)
    with compresskit.compress_kv(model, policy) if policy else nullcontext():
        model.generate(ids, max_new_tokens=8, do_sample=False, cache=cache,
                       pad_token_id=tok.eos_token_id)
    return compresskit.api.cache_bytes(cache)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--lengths", default="2048,4096")
    ap.add_argument("--tasks", default="passkey,niah_single_1")
    ap.add_argument("--policies", default=DEFAULT_POLICIES)
    ap.add_argument("--trials", type=int, default=10, help="passkey trials and RULER samples per length")
    ap.add_argument("--out", default="bench/results/kvcache")
    args = ap.parse_args()

    import compresskit

    model, tok = compresskit.load_model(args.model)
    lengths = [int(n) for n in args.lengths.split(",")]
    tasks = args.tasks.split(",")
    rows, table = [], []
    for policy in [None, *args.policies.split(",")]:
        t0 = time.perf_counter()
        report = compresskit.evaluate(model, tok, tasks=tasks, lengths=lengths, passkey_trials=args.trials,
                                      samples=args.trials, kv=policy)
        seconds = time.perf_counter() - t0
        sizes = {n: measured_bytes(model, tok, n, policy) for n in lengths}
        scores = {f"{r.task}@{r.length}": r.score for r in report.rows}
        rows.append({"policy": policy or "full", "scores": scores, "cache_bytes": sizes, "seconds": seconds})
        table.append([policy or "full", *(f"{scores[f'{t}@{n}']:.0f}%" for n in lengths for t in tasks),
                      *(f"{sizes[n] / 1e6:.1f}" for n in lengths), f"{seconds:.0f}"])
        print(table[-1], flush=True)
    head = ["policy", *(f"{t} @ {n}" for n in lengths for t in tasks), *(f"cache MB @ {n} (+8)" for n in lengths),
            "eval s"]
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in table]
    note = (f"\n\n{args.model}, fp32 on CPU, {args.trials} passkey trials / needle samples per length; cache bytes "
            "measured (the tensors held after prefill + 8 decoded tokens), fp32 keys and values; eval s: seconds of "
            "the evaluation (a second or two: rows served from the eval cache of an earlier run).\n")
    write_results(args.out, "\n".join(md) + note, {"args": vars(args), "rows": rows}, echo=True)


if __name__ == "__main__":
    main()
