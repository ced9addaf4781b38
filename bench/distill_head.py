"""The distillation loss through the two lm_heads: the fused path against autograd with recomputation.

    python bench/distill_head.py                        # SmolLM2 sizes (vocab 49152, hidden 576)
    python bench/distill_head.py --lengths 1024,2048,4096 --repeats 5

Times one forward + backward of `compresskit.distill.head_losses` (KL at T=1, chunks of ``--chunk``
positions) on random hidden states and heads of the embedded model's shape (speed does not depend on
the values), with the student's head trained (as when every weight is distilled; tied to the
embeddings in SmolLM2) and frozen (``--train-parts`` without ``embed``, LoRA, a quantized student's
float head). Median of ``--repeats`` after one warm-up; both paths in the same process, alternating.
Writes bench/results/distill-head.{md,json}.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from _results import median_time, write_results  # bench/_results.py (scripts run by path)


def run(args: argparse.Namespace) -> dict:
    import torch

    from compresskit.distill import head_losses

    torch.manual_seed(0)
    s_head = torch.nn.Linear(args.hidden, args.vocab, bias=False)
    t_head = torch.nn.Linear(args.hidden, args.vocab, bias=False)
    rows = []
    for length in args.lengths:
        sh = torch.randn(1, length, args.hidden, requires_grad=True)
        th = torch.randn(1, length, args.hidden)
        for trained in (True, False):
            s_head.weight.requires_grad_(trained)
            seconds = {}
            for fused in (False, True):
                def step() -> None:
                    sh.grad, s_head.weight.grad = None, None
                    head_losses(sh, th, s_head, t_head, chunk=args.chunk, fused=fused).kl_mean().backward()
                seconds["fused" if fused else "autograd"] = median_time(step, args.repeats)
            row = {"length": length, "head": "trained" if trained else "frozen", **seconds,
                   "speedup": seconds["autograd"] / seconds["fused"]}
            print(row, flush=True)
            rows.append(row)
    return {"settings": {**vars(args), "threads": torch.get_num_threads()}, "rows": rows}


def _write(out: dict, args: argparse.Namespace) -> None:
    s = out["settings"]
    lines = ["| positions | student head | autograd + recompute s | fused s | speedup |", "|---|---|---|---|---|"]
    lines += [f"| {r['length']} | {r['head']} | {r['autograd']:.2f} | {r['fused']:.2f} | {r['speedup']:.2f}x |"
              for r in out["rows"]]
    md = (f"Forward + backward of the KL through two lm_heads of {s['vocab']} x {s['hidden']} (fp32, CPU, "
          f"{s['threads']} threads), chunks of {s['chunk']} positions, median of {s['repeats']}.\n\n"
          + "\n".join(lines) + "\n")
    write_results(args.out, md, out, echo=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="1024,2048")
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "distill-head"))
    args = ap.parse_args()
    args.lengths = [int(x) for x in args.lengths.split(",")]
    _write(run(args), args)


if __name__ == "__main__":
    main()
