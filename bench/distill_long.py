"""Distillation steps at long sequence length: do 8K-token steps of SmolLM2-135M fit this machine?

    python bench/distill_long.py                      # 2 steps at 8192 tokens, gradient checkpointing on
    python bench/distill_long.py --seqlen 4096 --steps 2

The student is the model with 25% of its MLP channels pruned (activation importance as in
bench/distill.py, on 2 x 2048 tokens: only the cost of a step is measured here, not its quality). Reports, per setting, the seconds per optimizer step and the
process's peak resident memory (``ru_maxrss``) after loading the models and after training; each
setting runs in its own process so the peaks do not mix. Writes bench/results/distill-long.{md,json}.
"""
from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from _results import write_results  # bench/_results.py (scripts run by path)


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def one(args: argparse.Namespace) -> dict:
    """Runs in a child process: load, prune, train ``args.steps`` steps at ``args.seqlen``; print a JSON row."""
    import torch

    import compresskit
    from compresskit import api

    teacher, tok = compresskit.load_model(args.model)
    student = copy.deepcopy(teacher)
    api.prune(student, mlp=0.25, protect_retrieval=False, tokenizer=tok, nsamples=2, seqlen=2048, seed=0)
    loaded = _peak_gib()
    t0 = time.perf_counter()
    result = compresskit.distill_model(student, teacher, tokenizer=tok, data="builtin", seqlen=args.seqlen,
                                       steps=args.steps, lr=3e-4, gradient_checkpointing=args.checkpointing,
                                       kl_chunk=args.kl_chunk)
    wall = time.perf_counter() - t0
    return {"seqlen": args.seqlen, "gradient_checkpointing": args.checkpointing, "kl_chunk": args.kl_chunk,
            "steps": result.steps, "tokens": result.tokens, "s_per_step": wall / result.steps,
            "tokens_per_s": result.tokens / wall, "peak_gib_loaded": loaded, "peak_gib": _peak_gib(),
            "threads": torch.get_num_threads(), "kl": [round(h["kl"], 4) for h in result.history]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--seqlen", default="8192", help="comma-separated lengths, one child process each")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--kl-chunk", type=int, default=1024)
    ap.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "distill-long"))
    args = ap.parse_args()
    if args.child:
        args.seqlen = int(args.seqlen)
        print("ROW " + json.dumps(one(args)), flush=True)
        return
    rows = []
    for n in args.seqlen.split(","):
        cmd = [sys.executable, __file__, "--child", "--model", args.model, "--seqlen", n, "--steps", str(args.steps),
               "--kl-chunk", str(args.kl_chunk), "--checkpointing" if args.checkpointing else "--no-checkpointing"]
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = next((x for x in out.stdout.splitlines() if x.startswith("ROW ")), None)
        if line is None:
            rows.append({"seqlen": int(n), "error": (out.stderr or out.stdout)[-400:], "returncode": out.returncode})
        else:
            rows.append(json.loads(line[4:]))
        print(rows[-1], flush=True)
    lines = ["| seqlen | gradient checkpointing | kl chunk | steps | s / step | tokens/s | peak RSS loaded (GiB) | "
             "peak RSS training (GiB) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['seqlen']} | failed (exit {r['returncode']}) | | | | | | |")
            continue
        lines.append(f"| {r['seqlen']} | {'on' if r['gradient_checkpointing'] else 'off'} | {r['kl_chunk']} | "
                     f"{r['steps']} | {r['s_per_step']:.0f} | {r['tokens_per_s']:.1f} | {r['peak_gib_loaded']:.2f} | "
                     f"{r['peak_gib']:.2f} |")
    threads = next((r["threads"] for r in rows if "threads" in r), "?")
    md = (f"CPU, {threads} torch thread(s), fp32, batch 1; teacher SmolLM2-135M-Instruct, student its 25%-MLP-pruned "
          "copy, all weights trained, forward KL; peak RSS is the process's (both models, optimizer state, "
          "activations).\n\n" + "\n".join(lines) + "\n")
    write_results(args.out, md, {"settings": vars(args), "rows": rows}, echo=True)


if __name__ == "__main__":
    main()
