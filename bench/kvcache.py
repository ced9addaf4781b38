"""KV-cache policies on the embedded model, side by side: passkey / needle accuracy, the perplexity of a
continuation read after the compressed context, the bytes the cache really holds after the prompt and after
16 generated tokens, the prompt's forward time (scoring included) and the decoding speed.

    python bench/kvcache.py                                   # the 2K grid: every press at 25/50/75%, KIVI
    python bench/kvcache.py --lengths 4096,8192 --policies "full;tova:0.5;retrieval-heads:0.5;kivi:2" \\
        --out bench/results/kvcache_long

Each row is `compresskit.api.kv_sweep` (the same code as `compresskit kv`): tasks through
`compresskit.evaluate(..., kv=POLICY)` (every generation under the policy; ``full`` is the full cache), then
`continuation_ppl` and `measure_cache`. Writes OUT.{md,json} and the plots (score vs ratio per task, memory
vs length) beside them. kvpress and transformers' QuantizedCache run as peers: bench/kvpress_peer.py,
bench/hf_quantized_cache.py.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from _results import write_results  # bench/_results.py (scripts run by path)


PRESSES_AT_HALF = ("streaming", "snapkv", "tova", "knorm", "random", "ada-snapkv", "ada-tova", "retrieval-heads")
RATIO_SWEEP = ("streaming", "snapkv", "tova", "retrieval-heads")
DEFAULT_POLICIES = ";".join(["full", *(f"{p}:0.5" for p in PRESSES_AT_HALF),
                             *(f"{p}:{r}" for p in RATIO_SWEEP for r in (0.25, 0.75)),
                             "snapkv:0.5,tail=64", "tova:0.5,tail=64", "retrieval-heads:0.5,tail=64",
                             "kivi:4", "kivi:2", "snapkv:0.5+kivi:4", "tova:0.5+kivi:4"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--lengths", default="2048")
    ap.add_argument("--tasks", default="passkey,niah_single_1,niah_multikey_1")
    ap.add_argument("--policies", default=DEFAULT_POLICIES, help="';'-separated specs (options use commas)")
    ap.add_argument("--trials", type=int, default=5, help="passkey trials and RULER samples per length")
    ap.add_argument("--continuation", type=int, default=256, help="tokens of the continuation perplexity")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--no-timing", action="store_true", help="skip cache bytes, prefill time and decode speed")
    ap.add_argument("--out", default="bench/results/kvcache")
    args = ap.parse_args()

    import torch

    import compresskit

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = compresskit.load_model(args.model)
    t0 = time.perf_counter()
    sweep = compresskit.api.kv_sweep(
        model, tok, args.policies.split(";"), lengths=[int(n) for n in args.lengths.split(",")],
        tasks=[t for t in args.tasks.split(",") if t], trials=args.trials, continuation=args.continuation,
        timing=not args.no_timing,
        progress=lambda n, msg=None: print(f"  done: {msg} ({time.perf_counter() - t0:.0f} s)", flush=True))
    plots = sweep.plot(Path(args.out).parent / f"{Path(args.out).name}_plots")
    note = (f"\n\n{args.model}, fp32 on CPU, {torch.get_num_threads()} torch thread(s), {args.trials} passkey "
            f"trials / needle samples per task and length. Scores in %; continuation ppl: perplexity of the "
            f"{args.continuation} held-out tokens after a context of that length compressed by the policy; cache MB: "
            "bytes of the tensors the cache holds (fp32) after the prompt and after 16 generated tokens; prefill s: the "
            "prompt's forward with the policy's scoring; decode tok/s: median of 16 single-token steps. "
            f"Total {time.perf_counter() - t0:.0f} s. Plots: {', '.join(p.name for p in plots)}.\n")
    write_results(args.out, sweep.table() + note, {"args": vars(args), **sweep.to_dict()}, echo=True)


if __name__ == "__main__":
    main()
