"""Evaluation with batched generation: the same tasks on the embedded model, prompts decoded one at a time
and BATCH at a time (left-padded, one generate call per task and length), wall time and scores side by side.

    python bench/eval_batching.py                                   # the main command's evaluation
    python bench/eval_batching.py --lengths 1024,2048 --batch-sizes 1,4,8
    python bench/eval_batching.py --kv snapkv:0.5 --lengths 2048 --samples 10 --out bench/results/eval_batching_kv

Under ``--kv`` (a KV-cache policy) each generate call's left-padded batch is split by prompt length into
unpadded batches (one prompt each with per-head budgets), so batch 1 is what evaluation ran before.

The main command (README) evaluates the parent and the child with compresskit's default tasks at 1024
tokens; this times one such evaluation of the fp model. Writes bench/results/eval_batching.{md,json}.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from _results import write_results  # bench/_results.py (run by path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tasks", default="ppl,passkey,niah_single_1,niah_multikey_1,vt,cwe")
    ap.add_argument("--lengths", default="1024")
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--kv", default=None, help="a KV-cache policy to evaluate under (e.g. snapkv:0.5)")
    ap.add_argument("--samples", type=int, default=5, help="passkey trials and RULER samples per length")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "eval_batching"))
    args = ap.parse_args()

    from contextlib import nullcontext

    import torch

    import compresskit
    from compresskit.eval import evaluate
    from compresskit.kvcache import compress_kv

    model, tok = compresskit.load_model(args.model)
    text = compresskit.api.heldout_text()
    tasks, lengths = args.tasks.split(","), [int(n) for n in args.lengths.split(",")]
    runs = {}
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        with compress_kv(model, args.kv) if args.kv else nullcontext():
            t0 = time.perf_counter()
            report = evaluate(model, tok, tasks=tasks, lengths=lengths, text=text, ppl_windows=4,
                              passkey_trials=args.samples, samples=args.samples, batch_size=bs)
            runs[bs] = {"seconds": time.perf_counter() - t0,
                        "scores": {f"{r.task}@{r.length}": r.score for r in report.rows}}
        print(f"batch {bs}: {runs[bs]['seconds']:.1f}s {runs[bs]['scores']}", flush=True)
    base = min(runs)
    keys = list(runs[base]["scores"])
    head = "| batch size | eval s | speedup | " + " | ".join(keys) + " |\n|" + "---|" * (3 + len(keys))
    rows = [f"| {bs} | {r['seconds']:.1f} | {runs[base]['seconds'] / r['seconds']:.2f}x | "
            + " | ".join(f"{r['scores'][k]:.2f}" if k.startswith("ppl") else f"{r['scores'][k]:.0f}" for k in keys)
            + " |" for bs, r in runs.items()]
    same = all(r["scores"] == runs[base]["scores"] for r in runs.values())
    kv = f", KV-cache policy {args.kv}" if args.kv else ""
    md = (f"{args.model}, fp32 on {torch.get_num_threads()} CPU threads{kv}, tasks {args.tasks} at {args.lengths} "
          f"tokens, {args.samples} prompts per task and length, one evaluation (no cache).\n\n"
          + "\n".join([head, *rows]) + f"\n\nscores identical across batch sizes: {same}\n")
    write_results(args.out, md, {"settings": vars(args), "runs": runs, "identical": same}, echo=True)


if __name__ == "__main__":
    main()
